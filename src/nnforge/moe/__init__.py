"""Mixture-of-experts: the ``MoE`` layer, registered routers, balancing, dispatch and routing diagnostics.

>>> import torch
>>> from nnforge.moe import MoE, MoEConfig, collect_routing
>>> layer = MoE(32, MoEConfig(num_experts=4, hidden=16, router_options={"k": 2}))
>>> with collect_routing(layer) as routing:
...     y = layer(torch.randn(2, 5, 32))
>>> y.shape, len(routing.reports), routing.reports[0].tokens
(torch.Size([2, 5, 32]), 1, 10)
"""

from __future__ import annotations

from nnforge.moe._experts import DISPATCHES, ExpertFFN, Experts
from nnforge.moe._layer import MoE, MoEConfig, freeze_routers_
from nnforge.moe._report import RoutingCollector, RoutingReport, balancing_losses, collect_routing, routing_report
from nnforge.moe._routing import Routing, sort_assignments
from nnforge.moe.gpt import MoEGPT, MoEGPTConfig, add_balancing_loss, build_moe_gpt
from nnforge.moe.prune import ExpertPruneConfig, prune_experts
from nnforge.moe.routers import ROUTERS, RouterOptions, register_router
from nnforge.moe.upcycle import UpcycleConfig, UpcycleReport, apply_upcycle, upcycle_

__all__ = ["MoE", "MoEConfig", "Experts", "ExpertFFN", "DISPATCHES", "Routing", "sort_assignments", "ROUTERS", "RouterOptions",
           "register_router", "RoutingReport", "RoutingCollector", "collect_routing", "routing_report",
           "balancing_losses", "MoEGPT", "MoEGPTConfig", "build_moe_gpt", "UpcycleConfig", "UpcycleReport", "upcycle_",
           "freeze_routers_", "ExpertPruneConfig", "prune_experts", "apply_upcycle",
           "add_balancing_loss"]
