"""Routing diagnostics: a training callback that watches the routing and raises alarms, routing by data slice,
and routing drift between two checkpoints.

* :class:`RoutingMonitor` — every ``every`` steps it collects the routing of that step's training forwards and
  records, per MoE layer, the load, imbalance (max / mean), entropy, dropped-token rate and dead experts. It raises
  an alarm (a ``nnforge.moe`` warning, an entry in ``alarms`` and a call of ``on_alarm``, which the recipe step
  turns into a ledger event) on **collapse** (one expert takes at least ``collapse_share`` of a layer's
  assignments) and on a **dead expert** (no assignment in ``dead_patience`` samples in a row). Each alarm is raised
  once per layer and kind.
* :func:`routing_by_slice` — the load each slice of the data (a domain, a genre, verse vs prose) puts on each
  expert, and which experts serve it: a rare domain served by an overloaded or a dead expert shows here.
* :func:`routing_drift` — how the routing of the same inputs changed between two models (before and after
  fine-tuning): top-1 agreement, top-k overlap and the load shift per layer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nnforge.moe._report import RoutingCollector, RoutingReport, collect_routing
from nnforge.train import Callback, TrainState

__all__ = ["RoutingMonitor", "RoutingAlarm", "routing_by_slice", "routing_drift", "SliceRouting", "LayerDrift"]

log = logging.getLogger("nnforge.moe")


@dataclass(frozen=True)
class RoutingAlarm:
    kind: str  # "collapse" or "dead-expert"
    layer: str
    step: int
    message: str
    experts: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "step": self.step, "message": self.message,
                "experts": list(self.experts)}


def _merge(reports: list[RoutingReport]) -> dict[str, Any]:
    """One layer's reports of one step (micro-batches) as token-weighted means."""
    tokens = sum(r.tokens for r in reports)
    load = torch.tensor([r.load for r in reports]).T @ torch.tensor([float(r.tokens) for r in reports]) / tokens
    e = reports[0].num_experts
    return {"tokens": tokens, "load": load.tolist(), "imbalance": float(load.max() * e),
            "entropy": sum(r.entropy * r.tokens for r in reports) / tokens,
            "dropped_rate": sum(r.dropped_rate * r.tokens for r in reports) / tokens,
            "dead": [i for i, x in enumerate(load.tolist()) if x == 0.0],
            "aux_loss": sum(r.aux_loss for r in reports) / len(reports)}


class RoutingMonitor(Callback):
    """A :func:`~nnforge.train.fit` callback that samples the routing every ``every`` steps (see the module).

    Attributes:
        history: ``{"step", "layer", "load", "imbalance", "entropy", "dropped_rate", "dead", "aux_loss"}`` per
            sampled step and layer.
        alarms: the :class:`RoutingAlarm` raised, in order.
    """

    def __init__(self, model: nn.Module, *, every: int = 10, collapse_share: float = 0.9, dead_patience: int = 3,
                 on_alarm: Callable[[RoutingAlarm], None] | None = None) -> None:
        if every < 1 or dead_patience < 1 or not 0 < collapse_share <= 1:
            raise ValueError(f"RoutingMonitor: every ({every}) and dead_patience ({dead_patience}) must be >= 1 and "
                             f"collapse_share ({collapse_share}) in (0, 1]")
        self.model, self.every, self.collapse_share, self.dead_patience = model, every, collapse_share, dead_patience
        self.on_alarm = on_alarm
        self.history: list[dict[str, Any]] = []
        self.alarms: list[RoutingAlarm] = []
        self._raised: set[tuple[str, str]] = set()
        self._dead_runs: dict[tuple[str, int], int] = {}
        self._block: contextlib.ExitStack | None = None
        self._collector: RoutingCollector | None = None

    # --- the loop's events ----------------------------------------------------------------------------------

    def step_start(self, state: TrainState) -> None:
        if (state.step + 1) % self.every == 0 and self._block is None:
            self._block = contextlib.ExitStack()
            self._collector = self._block.enter_context(collect_routing(self.model))

    def before_backward(self, state: TrainState) -> None:
        self._close()  # the step's forwards are done: stop collecting before anything else runs a forward

    def step_end(self, state: TrainState) -> None:
        self._close()
        collector, self._collector = self._collector, None
        if collector is not None and collector.reports:
            self._record(state.step, collector)

    def fit_end(self, state: TrainState) -> None:
        self._close()
        self._collector = None

    def _close(self) -> None:
        if self._block is not None:
            self._block.close()
            self._block = None

    # --- what is recorded -----------------------------------------------------------------------------------

    def _record(self, step: int, collector: RoutingCollector) -> None:
        for layer, reports in collector.by_layer().items():
            row = {"step": step, "layer": layer, **_merge(reports)}
            self.history.append(row)
            top = max(range(len(row["load"])), key=lambda i: row["load"][i])
            if row["load"][top] >= self.collapse_share:
                self._alarm("collapse", layer, step, (top,),
                            f"routing collapse in {layer or 'the MoE layer'} at step {step}: expert {top} takes "
                            f"{row['load'][top]:.0%} of the assignments (entropy {row['entropy']:.2f})")
            for e, share in enumerate(row["load"]):
                key = (layer, e)
                self._dead_runs[key] = self._dead_runs.get(key, 0) + 1 if share == 0.0 else 0
            dead = tuple(e for e in range(len(row["load"])) if self._dead_runs[(layer, e)] >= self.dead_patience)
            if dead:
                self._alarm("dead-expert", layer, step, dead,
                            f"dead experts in {layer or 'the MoE layer'} at step {step}: {list(dead)} received no "
                            f"token in {self.dead_patience} samples in a row")

    def _alarm(self, kind: str, layer: str, step: int, experts: tuple[int, ...], message: str) -> None:
        if (kind, layer) in self._raised:
            return
        self._raised.add((kind, layer))
        alarm = RoutingAlarm(kind, layer, step, message, experts)
        self.alarms.append(alarm)
        log.warning("%s", message)
        if self.on_alarm is not None:
            self.on_alarm(alarm)

    def last(self) -> dict[str, dict[str, Any]]:
        """The latest sample of each layer."""
        return {row["layer"]: row for row in self.history}


# --- routing by slice, and drift ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SliceRouting:
    """Per slice and layer: the load on each expert, and the experts that serve the slice (load ≥ ``1/E``)."""

    load: dict[str, dict[str, list[float]]]  # slice -> layer -> (E,)
    tokens: dict[str, int] = field(default_factory=dict)

    def serving(self, slice_name: str, layer: str) -> list[int]:
        load = self.load[slice_name][layer]
        return [e for e, x in enumerate(load) if x >= 1.0 / len(load)]

    def to_dict(self) -> dict[str, Any]:
        return {"load": self.load, "tokens": self.tokens,
                "serving": {s: {layer: self.serving(s, layer) for layer in ls} for s, ls in self.load.items()}}


@torch.no_grad()
def _route(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any]) -> RoutingCollector:
    was_training = model.training
    model.eval()
    try:
        with collect_routing(model) as collector:
            for batch in batches:
                forward(model, batch)
    finally:
        model.train(was_training)
    return collector


def _default_forward(model: nn.Module, batch: Any) -> Any:
    return model(batch)


def routing_by_slice(model: nn.Module, slices: Mapping[str, Iterable[Any]],
                     forward: Callable[[nn.Module, Any], Any] = _default_forward) -> SliceRouting:
    """Run each slice's batches through ``model`` (eval mode, no gradients) and average each layer's load."""
    load: dict[str, dict[str, list[float]]] = {}
    tokens: dict[str, int] = {}
    for name, batches in slices.items():
        collector = _route(model, batches, forward)
        merged = {layer: _merge(reports) for layer, reports in collector.by_layer().items()}
        load[name] = {layer: m["load"] for layer, m in merged.items()}
        tokens[name] = max((m["tokens"] for m in merged.values()), default=0)
    return SliceRouting(load, tokens)


@dataclass(frozen=True)
class LayerDrift:
    """How one layer's routing of the same tokens changed between two models."""

    layer: str
    top1_agreement: float  # share of tokens whose first-choice expert is unchanged
    topk_overlap: float  # mean |chosen_a ∩ chosen_b| / k
    load_shift: float  # total variation between the two load vectors (0 = same load, 1 = disjoint)
    load_before: list[float]
    load_after: list[float]

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def routing_drift(before: nn.Module, after: nn.Module, batches: Iterable[Any],
                  forward: Callable[[nn.Module, Any], Any] = _default_forward) -> list[LayerDrift]:
    """Compare the routing of ``before`` and ``after`` (e.g. before and after fine-tuning) on the same batches.

    Raises:
        ValueError: the two models' MoE layers differ (names) or a router does not report its choices (expert
            choice has no per-token choice to compare).
    """
    batches = list(batches)
    a, b = _route(before, batches, forward).by_layer(), _route(after, batches, forward).by_layer()
    if a.keys() != b.keys():
        raise ValueError(f"routing_drift: the models' MoE layers differ: {sorted(a)} vs {sorted(b)}")
    out = []
    for layer in a:
        ra, rb = a[layer], b[layer]
        if any(r.chosen is None for r in (*ra, *rb)):
            raise ValueError(f"routing_drift: layer {layer!r} has no per-token choices (an expert-choice router)")
        ca = torch.cat([r.chosen for r in ra if r.chosen is not None])
        cb = torch.cat([r.chosen for r in rb if r.chosen is not None])
        k = ca.shape[1]
        overlap = (ca.unsqueeze(2) == cb.unsqueeze(1)).any(-1).sum(-1).float() / k
        la, lb = _merge(ra)["load"], _merge(rb)["load"]
        out.append(LayerDrift(layer, float((ca[:, 0] == cb[:, 0]).float().mean()), float(overlap.mean()),
                              0.5 * sum(abs(x - y) for x, y in zip(la, lb, strict=True)), la, lb))
    return out
