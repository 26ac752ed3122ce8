"""Samplers by name: ``random``, ``tpe`` and ``nsga2`` wrap Optuna's; each folder here registers one.

A sampler folder's ``__init__`` calls :func:`register_sampler` with a factory
``factory(options: dict, context: SamplerContext) -> optuna.samplers.BaseSampler``. Importing this package
imports every public folder, so adding a sampler is adding a folder, with no list to edit. A folder must not
import Optuna at import time (``import nnforge.search`` stays cheap and works without it): import it inside
the factory, through :func:`nnforge.search._optuna.optuna`.
"""

from __future__ import annotations

from nnforge.registry import import_submodules
from nnforge.search.samplers._registry import SAMPLERS, SamplerContext, SamplerFactory, register_sampler

__all__ = ["SAMPLERS", "SamplerContext", "SamplerFactory", "register_sampler"]

import_submodules(__name__, __path__)
