"""Gradual pruning as a training callback: the cubic schedule, recovery training between pruning events, and
movement scores; masks live in the callback and are folded into the weights, so the saved model needs none."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnforge.compress._transform import ModuleChange, ModuleFilter, TransformReport, relative_error, tensor_bytes
from nnforge.compress.prune.criteria import Pattern, keep_mask
from nnforge.compress.prune.gradual.config import GradualPruneConfig
from nnforge.compress.prune.unstructured import NMConfig, UnstructuredConfig, prune_targets, weight_of

__all__ = ["cubic_sparsity", "GradualPruning", "gradual_pruning_callback", "nm_capped_keep"]


def cubic_sparsity(step: int, config: GradualPruneConfig) -> float:
    """The sparsity the schedule asks for after ``step`` optimizer steps (held between pruning events)."""
    if step < config.start_step:
        return 0.0
    span = config.end_step - config.start_step
    t = min(((step - config.start_step) // config.every) * config.every, span)  # the last pruning event
    return config.final_sparsity + (config.initial_sparsity - config.final_sparsity) * (1.0 - t / span) ** 3


def _nm_droppable(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The ``m - n`` lowest of every ``m`` consecutive entries of each row (the ones an N:M cap lets go)."""
    R, K = scores.shape
    groups = scores.reshape(R, K // m, m)
    rank = torch.argsort(torch.argsort(groups, dim=-1, stable=True), dim=-1)  # 0 = lowest of its group
    return (rank < m - n).reshape(R, K)


def nm_capped_keep(scores: torch.Tensor, drop: torch.Tensor | int, n: int, m: int) -> torch.Tensor:
    """The boolean mask keeping all but the ``drop`` lowest ``scores`` of each row of ``scores`` (``(R, K)``;
    one row for a layer-wide comparison), never more than ``m - n`` of any ``m`` consecutive entries dropped.

    ``drop`` may be one count or one per row. At ``drop = K (m - n) / m`` exactly ``n`` of every ``m`` stay:
    the N:M pattern. Ties go by position, so the result is deterministic.
    """
    R, K = scores.shape
    eligible = _nm_droppable(scores, n, m)
    candidates = torch.where(eligible, scores, torch.tensor(float("inf")))
    order = torch.argsort(candidates, dim=1, stable=True)
    counts = torch.as_tensor(drop).reshape(-1, 1).expand(R, 1)
    dropped = torch.arange(K).unsqueeze(0) < counts  # the first `drop` of each row's order
    return torch.ones_like(scores, dtype=torch.bool).scatter_(1, order, ~dropped)


class GradualPruning:
    """Training callback for :func:`nnforge.train.fit`: prunes on the schedule of a :class:`GradualPruneConfig`.

    ``FIT_START`` picks the layers (as :func:`~nnforge.compress.prune_` would; weights already zero count as
    pruned, so a resumed run keeps its masks); ``BEFORE_OPTIMIZER_STEP`` accumulates movement scores and zeroes
    the gradients of pruned weights; ``STEP_END`` prunes when the schedule rises and re-applies the masks (the
    optimizer's weight decay and momentum must not revive a pruned weight); ``FIT_END`` leaves the zeros in
    the weights and fills :attr:`report`. :meth:`final_config` is the one-shot config whose ``skeleton`` rebuild
    reloads the saved model.
    """

    def __init__(self, config: GradualPruneConfig, filter: ModuleFilter | None = None) -> None:
        self.config = config
        self.filter = filter  # filter(name, module) -> bool: the modules it may prune, as prune_'s
        self.masks: dict[str, torch.Tensor] = {}
        self.scores: dict[str, torch.Tensor] = {}
        self.layers: dict[str, nn.Module] = {}
        self.sparsity = 0.0
        self.history: list[tuple[int, float]] = []  # (step, sparsity) at each pruning event
        self.report: TransformReport | None = None
        self._dense: dict[str, torch.Tensor] = {}
        self._skipped: list[tuple[str, str]] = []

    def __call__(self, event: Any, state: Any) -> None:  # the train loop's callback protocol (by event name)
        handler = getattr(self, str(getattr(event, "value", event)), None)
        if handler is not None:
            handler(state)

    def fit_start(self, state: Any) -> None:
        cfg = self.config
        probe = UnstructuredConfig(modules=cfg.modules, skip=cfg.skip)
        report = TransformReport("probe", {})
        self.layers = {n: m for n, m, _ in prune_targets(state.model, probe, self.filter, report)}
        if cfg.m is not None:  # an N:M pattern fits only rows whose inputs are a multiple of m
            for name in [n for n, mod in self.layers.items() if weight_of(mod)[0].numel() % cfg.m]:
                inputs = weight_of(self.layers.pop(name))[0].numel()
                report.skipped.append((name, f"{inputs} inputs are not a multiple of {cfg.m}: no {cfg.pattern} "
                                             "pattern fits, left dense"))
        self._skipped = report.skipped
        for name, mod in self.layers.items():
            w = weight_of(mod).detach()
            self.masks[name] = w != 0
            self._dense[name] = w.float().cpu().clone()
            if cfg.criterion == "movement":
                self.scores[name] = torch.zeros_like(w, dtype=torch.float32)
        self._prune_to(cubic_sparsity(state.step, cfg), state.step)

    def before_optimizer_step(self, state: Any) -> None:
        with torch.no_grad():
            for name, mod in self.layers.items():
                grad = weight_of(mod).grad
                if grad is None:
                    continue
                if self.config.criterion == "movement":
                    self.scores[name] -= (weight_of(mod).detach() * grad).float()
                grad.mul_(self.masks[name])

    def step_end(self, state: Any) -> None:
        target = cubic_sparsity(state.step, self.config)
        if target > self.sparsity:
            self._prune_to(target, state.step)
        self._apply_masks()

    def fit_end(self, state: Any) -> None:
        self._apply_masks()
        self.report = self._report()

    # --- pruning ------------------------------------------------------------------------------------------

    def _importance(self, name: str) -> torch.Tensor:
        """Larger kept; weights already pruned rank lowest, so masks only grow."""
        mod = self.layers[name]
        score = self.scores[name] if self.config.criterion == "movement" else weight_of(mod).detach().abs().float()
        return torch.where(self.masks[name], score, torch.tensor(float("-inf"), device=score.device))

    def _prune_to(self, sparsity: float, step: int) -> None:
        if sparsity <= 0.0 or not self.layers:
            return
        scores = {n: self._importance(n).reshape(self.masks[n].shape[0], -1) for n in self.layers}
        if self.config.n is not None and self.config.m is not None:
            self._prune_nm(scores, sparsity)
        elif self.config.scope == "global":
            flat = torch.cat([s.reshape(-1).cpu() for s in scores.values()])
            drop = round(sparsity * flat.numel())
            threshold = torch.sort(flat, stable=True).values[drop - 1] if drop else None
            for name, s in scores.items():
                if threshold is not None:
                    keep = s > threshold.to(s.device)
                    self.masks[name] &= keep.reshape(self.masks[name].shape)
        else:
            for name, s in scores.items():
                keep = keep_mask(s.cpu(), Pattern(sparsity))
                self.masks[name] &= keep.reshape(self.masks[name].shape).to(self.masks[name].device)
        self.sparsity = sparsity
        self.history.append((step, sparsity))
        self._apply_masks()

    def _prune_nm(self, scores: dict[str, torch.Tensor], sparsity: float) -> None:
        """Drop ``sparsity`` of the weights (of each layer, or of all layers for global scope), at most
        ``m - n`` of every ``m`` consecutive inputs of a row: the last event leaves the N:M pattern."""
        n, m = self.config.n or 0, self.config.m or 1  # set: the caller checked
        flat = {name: s.cpu().reshape(1, -1) for name, s in scores.items()}
        drops = {name: round(sparsity * f.numel()) for name, f in flat.items()}
        if self.config.scope == "global":  # one threshold among the weights the caps let go, shared by all layers
            eligible = {name: _nm_droppable(f, n, m) for name, f in flat.items()}
            pool = torch.cat([f[eligible[name]] for name, f in flat.items()])
            total = round(sparsity * sum(f.numel() for f in flat.values()))
            lowest = torch.zeros(pool.numel(), dtype=torch.bool)
            lowest[torch.argsort(pool, stable=True)[:total]] = True
            for name, part in zip(flat, torch.split(lowest, [int(e.sum()) for e in eligible.values()]), strict=True):
                drops[name] = int(part.sum())
        for name, f in flat.items():
            keep = nm_capped_keep(f, drops[name], n, m).reshape(self.masks[name].shape)
            self.masks[name] &= keep.to(self.masks[name].device)

    def _apply_masks(self) -> None:
        with torch.no_grad():
            for name, mod in self.layers.items():
                weight_of(mod).mul_(self.masks[name])

    def _report(self) -> TransformReport:
        cfg = self.config
        report = TransformReport(f"prune:gradual:{cfg.criterion}:{cfg.scope}", cfg.to_dict(),
                                 skipped=list(self._skipped))
        for name, mod in self.layers.items():
            w = weight_of(mod).detach()
            zeros, total = int((w == 0).sum()), w.numel()
            nbytes = tensor_bytes(weight_of(mod), getattr(mod, "bias", None))
            kind = cfg.pattern if cfg.n is not None else "unstructured"
            detail = (f"sparsity {zeros / total:.4f} ({zeros} of {total} weights zero), {kind} "
                      f"({cfg.scope}-wise), criterion {cfg.criterion}, cubic schedule to {cfg.final_sparsity} by step "
                      f"{cfg.end_step}; stored dense: the zeros save no bytes or time until a sparse format stores "
                      "and runs them")
            report.changed.append(ModuleChange(name, type(mod).__name__, nbytes, nbytes,
                                               relative_error(self._dense[name], w.float().cpu()), detail))
        return report

    def final_config(self) -> UnstructuredConfig | NMConfig:
        """The one-shot config that stands for this run in a saved model's spec (its skeleton build reshapes
        nothing: the zeros are in the saved weights)."""
        cfg = self.config
        if cfg.n is not None and cfg.m is not None:
            return NMConfig(n=cfg.n, m=cfg.m, modules=cfg.modules, skip=cfg.skip)
        return UnstructuredConfig(sparsity=cfg.final_sparsity, scope=cfg.scope, modules=cfg.modules, skip=cfg.skip)


def gradual_pruning_callback(config: GradualPruneConfig | None = None) -> GradualPruning:
    """A :class:`GradualPruning` callback (80% by magnitude over 1,000 steps when ``config`` is omitted)."""
    return GradualPruning(config or GradualPruneConfig())
