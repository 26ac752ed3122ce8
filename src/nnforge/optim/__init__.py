"""Optimizers beyond Adam, one file each, registered by name, plus parameter grouping for hybrids.

    from nnforge.optim import build_optimizer, optimizer_names, param_groups_for
    opt = build_optimizer("batched-muon", model, lr=0.02, adamw_lr=6e-3)
    opt = build_optimizer("soap", model.parameters(), lr=3e-3, precondition_frequency=10)

torch's own AdamW, Adafactor and Muon (as a Muon + AdamW hybrid) are registered beside nnforge's SOAP,
Schedule-Free AdamW, Prodigy, Lion, Sophia, AdamW with hypergradient descent, Batched Muon and NorMuon
(Batched Muon with per-neuron normalisation). Every option is validated by the optimizer's config class;
mistakes raise :class:`~nnforge.errors.ConfigError` naming the option. Every public module here is imported
with the package, so a new optimizer is one new file with its ``@register_optimizer``. See ``docs/optim.md``.
"""

from __future__ import annotations

from nnforge.optim._groups import param_groups_for
from nnforge.optim._hybrid import HybridOptimizer
from nnforge.optim._registry import (
    ADAM_STATE,
    OPTIMIZERS,
    OptimizerSpec,
    StateShape,
    build_optimizer,
    cols_square,
    like_param,
    optimizer_config,
    optimizer_names,
    register_optimizer,
    rows_square,
    scalar,
)
from nnforge.optim.batched_muon import BatchedMuon, BatchedMuonConfig, NorMuonConfig
from nnforge.optim.hypergradient import AdamWHD, AdamWHDConfig
from nnforge.optim.lion import Lion, LionConfig
from nnforge.optim.prodigy import Prodigy, ProdigyConfig
from nnforge.optim.schedule_free import ScheduleFreeAdamW, ScheduleFreeConfig
from nnforge.optim.soap import SOAP, SOAPConfig
from nnforge.optim.sophia import Sophia, SophiaConfig
from nnforge.registry import import_submodules

__all__ = [
    "OPTIMIZERS",
    "OptimizerSpec",
    "build_optimizer",
    "optimizer_names",
    "optimizer_config",
    "register_optimizer",
    "StateShape",
    "ADAM_STATE",
    "like_param",
    "scalar",
    "rows_square",
    "cols_square",
    "param_groups_for",
    "HybridOptimizer",
    "AdamWHD",
    "AdamWHDConfig",
    "BatchedMuon",
    "BatchedMuonConfig",
    "Lion",
    "LionConfig",
    "NorMuonConfig",
    "Prodigy",
    "ProdigyConfig",
    "SOAP",
    "SOAPConfig",
    "ScheduleFreeAdamW",
    "ScheduleFreeConfig",
    "Sophia",
    "SophiaConfig",
]

import_submodules(__name__, __path__)  # every optimizer module registers itself: a new one is one new file
