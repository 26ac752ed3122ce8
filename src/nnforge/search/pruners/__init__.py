"""Pruners by name: ``none``, ``median``, ``successive-halving``, ``hyperband`` wrap Optuna's.

A pruner stops a poor trial early from the intermediate values it reports (``TrialContext.report``, or the
evaluations of a training run through ``TrialContext.train_callback``). A pruner folder's ``__init__`` calls
:func:`register_pruner` with ``factory(options: dict) -> optuna.pruners.BasePruner``, importing Optuna inside
the factory; adding a pruner is adding a folder.
"""

from __future__ import annotations

from nnforge.registry import import_submodules
from nnforge.search.pruners._registry import PRUNERS, PrunerFactory, register_pruner

__all__ = ["PRUNERS", "PrunerFactory", "register_pruner"]

import_submodules(__name__, __path__)
