"""Routers, registered by name in :data:`ROUTERS`: ``top-k`` (token choice, softmax or sigmoid scores, optional
capacity) and ``expert-choice``. A router is an ``nn.Module`` built as ``cls(d_model, num_experts, options)`` whose
``forward(x: (N, d)) -> Routing``; its ``Options`` (a :class:`~nnforge.config.Config`) validates ``router_options``.
Adding a router is adding a module here that registers itself: nothing else lists them.
"""

from __future__ import annotations

from nnforge.moe.routers._base import ROUTERS, RouterOptions, register_router
from nnforge.registry import import_submodules

__all__ = ["ROUTERS", "RouterOptions", "register_router"]

import_submodules(__name__, __path__)
