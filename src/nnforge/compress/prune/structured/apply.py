"""Apply structured pruning: rank the units of every structure, then cut the lowest-ranked ones out."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from nnforge.compress._transform import ModuleChange, ModuleFilter, TransformReport, register_transform, tensor_bytes
from nnforge.compress.prune.structured.config import StructuredPruneConfig
from nnforge.compress.prune.structured.structures import Structure, find_structures, weight_of
from nnforge.compress.quantize.calibrate.stats import run_hooked
from nnforge.errors import ConfigError, DataError

__all__ = ["StructuredPlan", "apply_structured", "plan_structured"]

Forward = Callable[[nn.Module, Any], Any]


def _needs_data(config: StructuredPruneConfig) -> bool:
    from nnforge.compress.prune.criteria import CRITERIA

    return CRITERIA.get(config.criterion).needs_data or config.blocks > 0


def _module_bytes(mod: nn.Module) -> int:
    return tensor_bytes(*mod.parameters(recurse=True), *mod.buffers(recurse=True))


# --- scores -----------------------------------------------------------------------------------------------

def _scores(model: nn.Module, s: Structure, criterion: str, stats: dict[str, Any]) -> torch.Tensor:
    """How much each unit matters (the higher, the later it is removed): the criterion's score of every weight
    of the consumer, summed over each unit's input columns."""
    from nnforge.compress.prune.criteria import CRITERIA, Pattern, PruneJob

    w = weight_of(model, s.consumer).detach().float().cpu()
    w2 = w.reshape(w.shape[0], -1)  # a conv's (out, in · kh · kw), as the criteria take it
    scores = CRITERIA.get(criterion).score(PruneJob(w2, Pattern(), stats.get(s.consumer)))
    per_column = scores.reshape(w.shape[0], w.shape[1], -1).sum((0, 2))  # (in,)
    return per_column[s.cols(torch.arange(s.units)).reshape(s.units, s.cons_width)].sum(1)


def _consumer_stats(model: nn.Module, chosen: list[Structure], config: StructuredPruneConfig,
                    batches: Iterable[Any], forward: Forward | None) -> dict[str, Any]:
    """The consumers' input statistics (GPTQ's Hessian machinery), for a criterion that reads them."""
    from nnforge.compress.quantize.calibrate import collect_stats

    convs = [s.consumer for s in chosen if not isinstance(model.get_submodule(s.consumer), nn.Linear)]
    if convs:
        raise ConfigError(f"criterion {config.criterion!r} reads the statistics of Linear inputs, and {convs[0]} is "
                          f"a {type(model.get_submodule(convs[0])).__name__}: rank conv channels with criterion "
                          "'magnitude', or leave them whole with channels=0")
    return collect_stats(model, batches, modules=sorted({s.consumer for s in chosen}), forward=forward, sample_rows=0)


def _influence(model: nn.Module, blocks: list[Structure], batches: Iterable[Any],
               forward: Forward | None) -> dict[str, float]:
    """Each block's influence on ``batches``: the mean ``1 - cos`` between its input and output tokens (ShortGPT's
    Block Influence); the least influential blocks are removed first."""
    influence: dict[str, list[float]] = {}

    def block_hook(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            acc = influence.setdefault(name, [0.0, 0.0])
            acc[0] += float((1 - cos).sum())
            acc[1] += cos.numel()
        return hook

    handles = [model.get_submodule(s.name).register_forward_hook(block_hook(s.name), with_kwargs=True)
               for s in blocks if s.units]
    run_hooked(model, handles, batches, forward)
    missing = [s.name for s in blocks if s.units and s.name not in influence]
    if missing:
        raise DataError(f"structured pruning of blocks: no calibration batch ran through {missing[0]}; pass batches "
                        "that run through the model (calibration=[...])")
    return {k: a / max(n, 1.0) for k, (a, n) in influence.items()}


# --- the plan ---------------------------------------------------------------------------------------------

def _kept(s: Structure, config: StructuredPruneConfig) -> int:
    if s.name in config.shapes:
        k = config.shapes[s.name]
        if k > s.units or (k == 0 and s.kind != "block"):
            raise ConfigError(f"shapes[{s.name!r}]: {k} kept {s.kind} is not possible, the module has {s.units}; "
                              f"give 1..{s.units}" + (" (0 removes a block)" if s.kind == "block" else ""))
        return k
    fraction = {"heads": config.heads, "ffn": config.ffn, "channels": config.channels}[s.kind]
    k = max(1, round(s.units * (1.0 - fraction)))
    if s.kind != "heads" and fraction > 0:
        m = config.multiple_of
        if config.rounding == "down":  # prune at least the fraction; a count under one multiple stays
            k = (k // m) * m if k >= m else k
        else:
            k = min(s.units, math.ceil(k / m) * m)
    return k


def _plan_blocks(blocks: list[Structure], config: StructuredPruneConfig, influence: dict[str, float],
                 skeleton: bool) -> dict[str, torch.Tensor]:
    plan = {s.name: torch.arange(config.shapes[s.name]) for s in blocks if s.name in config.shapes}
    free = [s for s in blocks if s.name not in plan and s.units]
    n_remove = min(round(len(blocks) * config.blocks), len(free) - 1 if len(free) == len(blocks) else len(free))
    if n_remove > 0 and skeleton:
        raise ConfigError("blocks: which blocks were removed depends on the data, and this config does not name them; "
                          "rebuild from the config in the pruning report (report.config), whose 'shapes' does")
    gone = {s.name for s in sorted(free, key=lambda s: influence[s.name])[:n_remove]} if n_remove > 0 else set()
    plan.update({s.name: torch.arange(0 if s.name in gone else 1) for s in free})
    return plan


class StructuredPlan(NamedTuple):
    """What structured pruning keeps.

    Args:
        structures: every structure found in the model.
        keep: ``{structure name: sorted indices of the units kept}`` (a block: ``[0]`` kept, ``[]`` removed) for
            every structure the filter admits (not those inside a removed block).
        skipped: ``(structure name, reason)`` of those the filter left out.
        note: why some layers could not be searched ("" when all could).
    """

    structures: list[Structure]
    keep: dict[str, torch.Tensor]
    skipped: list[tuple[str, str]]
    note: str


def plan_structured(model: nn.Module, config: StructuredPruneConfig, filter: ModuleFilter | None = None, *,
                    calibration: Iterable[Any] | None = None, forward: Forward | None = None,
                    skeleton: bool = False) -> StructuredPlan:
    """What :func:`apply_structured` would remove, without changing ``model``."""
    structures, note = find_structures(model)
    known = {s.name for s in structures}
    unknown = sorted(set(config.shapes) - known)
    if unknown:
        raise ConfigError(f"shapes[{unknown[0]!r}]: the model has no prunable structure of that name; it has "
                          f"{', '.join(sorted(known)[:6]) or 'none'}{' …' if len(known) > 6 else ''}")
    skipped = [(s.name, "left out by the filter") for s in structures
               if filter is not None and not filter(s.name, model.get_submodule(s.name))]
    chosen = [s for s in structures if s.name not in dict(skipped)]
    blocks = [s for s in chosen if s.kind == "block"]
    from nnforge.compress.prune.criteria import CRITERIA

    data_criterion = CRITERIA.get(config.criterion).needs_data and not skeleton
    needs_blocks = any(s.name not in config.shapes for s in blocks) and config.blocks > 0 and not skeleton
    if data_criterion or needs_blocks:
        if calibration is None:
            raise ConfigError(f"structured pruning with criterion {config.criterion!r} or blocks > 0 needs calibration "
                              "data: prune_(model, config, calibration=batches)")
        calibration = list(calibration)  # read twice: the blocks' influence, then the layers' statistics
    influence = _influence(model, blocks, calibration or [], forward) if needs_blocks else {}
    plan = _plan_blocks(blocks, config, influence, skeleton)
    removed = [n for n, keep in plan.items() if len(keep) == 0]
    ranked: list[tuple[Structure, int]] = []
    for s in chosen:
        if s.kind == "block" or any(s.name.startswith(f"{b}.") for b in removed):
            continue
        k = _kept(s, config)
        if skeleton or k == s.units:
            plan[s.name] = torch.arange(k)
        else:
            ranked.append((s, k))
    stats = (_consumer_stats(model, [s for s, _ in ranked], config, calibration or [], forward)
             if data_criterion and ranked else {})
    for s, k in ranked:
        plan[s.name] = torch.topk(_scores(model, s, config.criterion, stats), k).indices.sort().values
    return StructuredPlan(structures, plan, skipped, note)


# --- the transform ----------------------------------------------------------------------------------------

def _weight_norm(mod: nn.Module) -> float:
    w = getattr(mod, "weight", None)
    return float(w.detach().float().norm()) if isinstance(w, torch.Tensor) else 0.0


@register_transform(StructuredPruneConfig, kind="prune", needs_data=_needs_data)
def apply_structured(model: nn.Module, config: StructuredPruneConfig, filter: ModuleFilter | None = None, *,
                     calibration: Iterable[Any] | None = None, forward: Forward | None = None,
                     skeleton: bool = False, progress: Callable[[int, int], None] | None = None) -> TransformReport:
    """Remove the lowest-ranked heads, FFN neurons, conv channels and blocks of ``model``, physically.

    Every cut layer is replaced by a smaller one (the consumer's input shrinks with the producer's output; a
    BatchNorm between them too; a char-GPT attention module becomes a :class:`PrunedCausalSelfAttention` with
    fewer heads; a removed block a :class:`RemovedBlock`), so the model needs no mask and computes what the
    dense model computes with the removed units' outputs set to zero. The report's ``config`` names the kept
    count of every structure (``shapes``): a variant saved with it is rebuilt at the pruned shapes.

    A data-driven criterion (``wanda``, ``sparsegpt``) reads the consumers' input statistics, and ``blocks`` the
    blocks' influence, both measured on ``calibration`` with the model as it is before any cut.
    """
    structures, plan, skipped, note = plan_structured(model, config, filter, calibration=calibration,
                                                      forward=forward, skeleton=skeleton)
    shapes = {name: len(keep) for name, keep in plan.items()}
    resolved = config.replace(shapes={**config.shapes, **shapes})
    report = TransformReport(f"structured:{config.criterion}", resolved.to_dict())
    by_name = {s.name: s for s in structures}
    cut = [by_name[n] for n in plan if len(plan[n]) < by_name[n].units]
    touched = list(dict.fromkeys(m for s in cut for m in s.modules))
    before = {m: (_module_bytes(model.get_submodule(m)), _weight_norm(model.get_submodule(m))) for m in touched}
    details: dict[str, list[str]] = {m: [] for m in touched}
    for i, s in enumerate(cut):
        keep = plan[s.name]
        what = f"{s.kind} {s.units} → {len(keep)} ({1 - len(keep) / s.units:.0%} removed, {config.criterion})"
        if s.kind == "block":
            details[s.name].append("block removed whole (its input passes through unchanged)")
        else:
            for p in s.producers:
                details[p].append(f"{what}: output rows")
            for n in s.norms:
                details[n].append(f"{what}: channels of {s.name}")
            details[s.consumer].append(f"{what}: input columns, for {s.name}")
        s.cut(model, keep)
        if progress:
            progress(i + 1, len(cut))
    for m in touched:
        after = _module_bytes(model.get_submodule(m))
        size, norm = before[m]
        err = 1.0 if not after else math.sqrt(max(0.0, 1 - (_weight_norm(model.get_submodule(m)) / norm) ** 2)) if norm else 0.0
        report.changed.append(ModuleChange(m, type(model.get_submodule(m)).__name__, size, after, 0.0 if skeleton else err,
                                           "; ".join(details[m]) + "; physically removed (smaller matrices, no mask)"))
    done = set(touched)
    for name, reason in skipped:
        report.skipped.append((name, reason))
    left = {n for n, _ in skipped}
    for name, mod in model.named_modules():
        if name and name not in done and name not in left and any(True for _ in mod.parameters(recurse=False)) \
                and not any(name.startswith(f"{t}.") for t in done):
            inside = next((s.name for s in structures if name in s.modules), None)
            report.skipped.append((name, f"in {inside}, left out by the filter" if inside in left
                                   else f"in {inside}, kept whole (its fraction keeps every unit)" if inside
                                   else "not part of a structure this pruner removes units from (heads, FFN neurons, "
                                        "conv channels, blocks): left as is" + (f"; {note}" if note else "")))
    return report
