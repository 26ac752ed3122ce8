"""Model cascades: a small model answers; when it is unsure or flags the input as out of distribution, the input
goes up to a larger model (in this process, another ``nnforge serve`` server, or any OpenAI-compatible endpoint)
and then to a person.

    from nnforge.deploy.cascade import Cascade, CascadeConfig, choose_thresholds, oracle_answers

    config = CascadeConfig(tiers=[
        {"name": "small", "kind": "local"},
        {"name": "large", "kind": "http", "options": {"url": "http://127.0.0.1:8000", "token_env": "LARGE_TOKEN"},
         "max_share": 0.5},
        {"name": "human", "kind": "human", "options": {"run": "<run-id>"}, "max_share": 0.1},
    ])
    cascade = Cascade(config, objects={"small": {"predict": small_probs, "labels": labels}})
    val = cascade.answer_all(x_val, skip=["human"]) | {"human": oracle_answers(y_val)}
    cascade = Cascade(choose_thresholds(config, val, y_val).config, objects=...)
    result = cascade.run(x_test, truth=y_test)   # per input: result.answers; per tier: result.tiers

See ``docs/cascade.md``. Tier kinds are registered by name (:func:`register_tier`); the built-in ones live in
:mod:`nnforge.deploy.cascade.tiers`, one module each.
"""

from __future__ import annotations

from nnforge.deploy.cascade import tiers
from nnforge.deploy.cascade._cascade import Cascade, CascadeAnswer, CascadeResult, Step, TierReport
from nnforge.deploy.cascade._config import CascadeConfig, TierConfig
from nnforge.deploy.cascade._thresholds import ThresholdChoice, choose_thresholds, simulate
from nnforge.deploy.cascade._tier import ANSWERED, TIER_KINDS, Tier, TierAnswer, oracle_answers, register_tier
from nnforge.deploy.cascade.tiers.http import HttpTier
from nnforge.deploy.cascade.tiers.human import HumanTier
from nnforge.deploy.cascade.tiers.local import LocalTier
from nnforge.deploy.cascade.tiers.openai import OpenAITier

__all__ = [
    "ANSWERED",
    "Cascade",
    "CascadeAnswer",
    "CascadeConfig",
    "CascadeResult",
    "HttpTier",
    "HumanTier",
    "LocalTier",
    "OpenAITier",
    "Step",
    "TIER_KINDS",
    "ThresholdChoice",
    "Tier",
    "TierAnswer",
    "TierConfig",
    "TierReport",
    "choose_thresholds",
    "oracle_answers",
    "register_tier",
    "simulate",
    "tiers",
]
