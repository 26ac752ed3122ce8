"""What the routing did, per MoE layer and forward pass: :class:`RoutingReport`, and :func:`collect_routing`.

An MoE layer does not keep what it routed: inside ``with collect_routing(model) as routing:`` every MoE layer
of ``model`` adds a report per forward pass (named by its module path) and its balancing loss to
``routing.loss``, which the caller adds to the task loss. Outside such a block a layer reports to no one.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["RoutingReport", "RoutingCollector", "collect_routing", "routing_report"]


@dataclass(frozen=True)
class RoutingReport:
    """One MoE layer's routing of one batch.

    Attributes:
        layer: the layer's module path in the model ("" when unnamed).
        tokens: tokens routed; ``num_experts``: experts in the layer.
        load: (E,) share of the assignments each expert received (sums to 1; after capacity drops).
        importance: (E,) mean routing probability per expert (the auxiliary loss's P).
        dropped_rate: share of the chosen assignments the capacity limit dropped.
        entropy: mean per-token entropy of the routing distribution, divided by ``log E`` (1 = uniform, 0 = one
            expert per token).
        aux_loss, z_loss: the balancing losses' values (unweighted).
        chosen: (N, k) experts each token chose (token choice), for routing by slice; None for expert choice.
    """

    layer: str
    tokens: int
    num_experts: int
    load: list[float]
    importance: list[float]
    dropped_rate: float
    entropy: float
    aux_loss: float
    z_loss: float
    chosen: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def imbalance(self) -> float:
        """max / mean expert load (1 = perfectly even; E = everything on one expert)."""
        mean = 1.0 / self.num_experts
        return max(self.load) / mean if self.load else float("nan")

    @property
    def dead(self) -> list[int]:
        """Experts that received no assignment."""
        return [e for e, x in enumerate(self.load) if x == 0.0]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "tokens": self.tokens, "num_experts": self.num_experts, "load": self.load,
                "importance": self.importance, "dropped_rate": self.dropped_rate, "entropy": self.entropy,
                "aux_loss": self.aux_loss, "z_loss": self.z_loss, "imbalance": self.imbalance, "dead": self.dead}


def balancing_losses(routing: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The Switch/GShard auxiliary loss ``E · Σ f_i · P_i`` and the router z-loss ``mean(logsumexp(logits)²)``.

    ``f_i`` is the share of the tokens' choices that went to expert ``i`` before any capacity drop (token choice)
    or of the assignments (expert choice); ``P_i`` the mean routing probability, normalised per token.
    """
    e = routing.num_experts
    chosen = routing.chosen if routing.chosen is not None else routing.expert
    f = torch.bincount(chosen.reshape(-1), minlength=e).float() / max(chosen.numel(), 1)
    p = routing.probs / routing.probs.sum(-1, keepdim=True).clamp_min(1e-9)
    aux = e * (f.detach() * p.mean(0)).sum()
    z = torch.logsumexp(routing.logits.float(), dim=-1).pow(2).mean()
    return aux, z


def routing_report(routing: Any, layer: str = "", losses: tuple[torch.Tensor, torch.Tensor] | None = None
                   ) -> RoutingReport:
    """A :class:`RoutingReport` of one :class:`~nnforge.moe.Routing` (no gradients kept); ``losses``: the
    balancing losses when already computed."""
    with torch.no_grad():
        e = routing.num_experts
        total = int(routing.counts.sum())
        load = (routing.counts.float() / max(total, 1)).tolist()
        p = routing.probs / routing.probs.sum(-1, keepdim=True).clamp_min(1e-9)
        ent = float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean() / math.log(e)) if e > 1 else 0.0
        aux, z = losses if losses is not None else balancing_losses(routing)
        chosen_n = total + routing.dropped
        return RoutingReport(layer, int(routing.logits.shape[0]), e, load, p.mean(0).tolist(),
                             routing.dropped / chosen_n if chosen_n else 0.0, ent, float(aux), float(z),
                             None if routing.chosen is None else routing.chosen.detach().cpu())


class RoutingCollector:
    """What :func:`collect_routing` gathers: ``reports`` (in forward order) and ``loss`` (the weighted balancing
    losses of every layer, a tensor with gradients; 0.0 before any layer ran)."""

    def __init__(self, names: dict[int, str]) -> None:
        self._names = names
        self.reports: list[RoutingReport] = []
        self.loss: torch.Tensor | float = 0.0

    def add(self, module: nn.Module, routing: Any, losses: tuple[torch.Tensor, torch.Tensor],
            loss: torch.Tensor | None) -> None:
        self.reports.append(routing_report(routing, self._names.get(id(module), ""), losses))
        if loss is not None:
            self.loss = self.loss + loss

    def by_layer(self) -> dict[str, list[RoutingReport]]:
        out: dict[str, list[RoutingReport]] = {}
        for r in self.reports:
            out.setdefault(r.layer, []).append(r)
        return out


_ACTIVE: contextvars.ContextVar[tuple[RoutingCollector, ...]] = contextvars.ContextVar("nnforge_moe_routing",
                                                                                      default=())


@contextlib.contextmanager
def collect_routing(model: nn.Module | None = None) -> Iterator[RoutingCollector]:
    """Collect the routing reports and balancing losses of every MoE layer that runs inside the block (layers
    named by their path in ``model``). Blocks nest: each collector sees every layer."""
    names = {id(m): n for n, m in model.named_modules()} if model is not None else {}
    collector = RoutingCollector(names)
    token = _ACTIVE.set((*_ACTIVE.get(), collector))
    try:
        yield collector
    finally:
        _ACTIVE.reset(token)


def active_collectors() -> tuple[RoutingCollector, ...]:
    return _ACTIVE.get()
