"""Search on Optuna: hyperparameters, architectures and compression plans against measured hardware objectives.

>>> from nnforge.search import Objective, Param, SearchConfig
>>> config = SearchConfig(space={"lr": Param(kind="float", low=1e-4, high=1e-1, log=True)},
...                       objectives=[Objective(metric="val_loss")], constraints=["latency_b1_ms <= 3"])
>>> config.sampler, config.pruner, str(config.parsed_constraints[0])
('tpe', 'none', 'latency_b1_ms <= 3')

:func:`search` runs the study (a journal file on one machine, PostgreSQL by URL for many; ``workers`` processes);
see ``docs/search.md``. Samplers and pruners are registries: a new one is a folder under ``samplers/`` or
``pruners/``.
"""

from __future__ import annotations

from nnforge.search._api import SearchConfig, search
from nnforge.search._objectives import Constraint, Objective
from nnforge.search._result import SearchProgress, SearchResult, TrialRecord
from nnforge.search._space import Param, suggest
from nnforge.search._trial import TrialContext
from nnforge.search.pruners import PRUNERS, register_pruner
from nnforge.search.samplers import SAMPLERS, SamplerContext, register_sampler

__all__ = [
    "Param",
    "suggest",
    "Objective",
    "Constraint",
    "SearchConfig",
    "TrialContext",
    "search",
    "SearchResult",
    "SearchProgress",
    "TrialRecord",
    "SAMPLERS",
    "SamplerContext",
    "register_sampler",
    "PRUNERS",
    "register_pruner",
]
