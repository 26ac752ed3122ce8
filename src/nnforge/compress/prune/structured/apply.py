"""Apply structured pruning: rank the units of every structure, then cut the lowest-ranked ones out."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from nnforge.compress._transform import ModuleChange, ModuleFilter, TransformReport, register_transform, tensor_bytes
from nnforge.compress.prune.structured.config import StructuredPruneConfig
from nnforge.compress.prune.structured.structures import Structure, find_structures, weight_of
from nnforge.errors import ConfigError, DataError

__all__ = ["apply_structured", "plan_structured"]

Forward = Callable[[nn.Module, Any], Any]


def _needs_data(config: StructuredPruneConfig) -> bool:
    return config.criterion == "wanda" or config.blocks > 0


def _run(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, tuple | list):
        return model(*batch)
    if isinstance(batch, dict):
        return model(**batch)
    return model(batch)


def _module_bytes(mod: nn.Module) -> int:
    return tensor_bytes(*mod.parameters(recurse=True), *mod.buffers(recurse=True))


# --- scores -----------------------------------------------------------------------------------------------

def _grouped(w: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """``w``'s slices ``idx`` (units, width) along ``dim``, as (units, everything else) in fp32."""
    t = w.detach().float().index_select(dim, idx.flatten().to(w.device)).movedim(dim, 0)
    return t.reshape(idx.shape[0], -1)


def _unit_index(s: Structure, parts: int, width: int) -> torch.Tensor:
    """(units, parts · width) indices of each unit's rows (or columns)."""
    u = torch.arange(s.units)[:, None, None]
    p = torch.arange(parts)[None, :, None] * s.units * width
    return (p + u * width + torch.arange(width)[None, None, :]).reshape(s.units, -1)


def _scores(model: nn.Module, s: Structure, criterion: str, norms: dict[str, torch.Tensor]) -> torch.Tensor:
    """How much each unit matters: the higher, the later it is removed."""
    consumer = weight_of(model, s.consumer)
    cols = _grouped(consumer, _unit_index(s, 1, s.cons_width), 1)  # (units, out · width · k)
    if criterion == "wanda":  # Wanda's |W_ij| · ||X_j||, summed over the unit's columns of the consumer
        x = norms[s.consumer].float().cpu()[_unit_index(s, 1, s.cons_width)]  # (units, width)
        w = consumer.detach().float().abs().movedim(1, 0).reshape(consumer.shape[1], -1).sum(1).cpu()
        return (w[_unit_index(s, 1, s.cons_width)] * x).sum(1)
    rows = torch.cat([_grouped(weight_of(model, p), _unit_index(s, s.parts, s.width), 0) for p in s.producers], dim=1)
    return (rows.norm(dim=1) * cols.norm(dim=1)).cpu()


def _calibrate(model: nn.Module, structures: list[Structure], batches: Iterable[Any], forward: Forward | None,
               want_norms: bool) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One pass over ``batches``: per-channel input norms of the consumers and each block's influence
    (mean ``1 - cos`` between its input and output tokens)."""
    sq: dict[str, torch.Tensor] = {}
    influence: dict[str, list[float]] = {}

    def norm_hook(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()
            v = x.pow(2).sum((0, 2, 3)) if isinstance(mod, nn.Conv2d) else x.reshape(-1, x.shape[-1]).pow(2).sum(0)
            sq[name] = sq[name] + v if name in sq else v
        return hook

    def block_hook(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            acc = influence.setdefault(name, [0.0, 0.0])
            acc[0] += float((1 - cos).sum())
            acc[1] += cos.numel()
        return hook

    handles = []
    for s in structures:
        if s.kind == "block" and s.units:
            handles.append(model.get_submodule(s.name).register_forward_hook(block_hook(s.name), with_kwargs=True))
        elif s.kind != "block" and want_norms:
            handles.append(model.get_submodule(s.consumer).register_forward_pre_hook(norm_hook(s.consumer)))
    run = forward or _run
    try:
        with torch.no_grad():
            for batch in batches:
                run(model, batch)
    finally:
        for h in handles:
            h.remove()
    if want_norms and not sq and any(s.kind != "block" for s in structures):
        raise DataError("structured pruning with criterion 'wanda': no calibration batch reached the pruned layers; "
                        "pass batches that run through the model (calibration=[...])")
    return {k: v.sqrt() for k, v in sq.items()}, {k: a / max(n, 1.0) for k, (a, n) in influence.items()}


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
        k = min(s.units, math.ceil(k / config.multiple_of) * config.multiple_of)
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


def plan_structured(model: nn.Module, config: StructuredPruneConfig, filter: ModuleFilter | None = None, *,
                    calibration: Iterable[Any] | None = None, forward: Forward | None = None,
                    skeleton: bool = False) -> tuple[list[Structure], dict[str, torch.Tensor], list[tuple[str, str]]]:
    """What :func:`apply_structured` would remove, without changing ``model``.

    Returns the structures found, ``{structure name: sorted indices of the units kept}`` (a block: ``[0]`` kept,
    ``[]`` removed) for every structure the filter admits, and the ``(name, reason)`` of those left alone.
    """
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
    want_norms = config.criterion == "wanda" and not skeleton
    needs_blocks = any(s.name not in config.shapes for s in blocks) and config.blocks > 0 and not skeleton
    norms: dict[str, torch.Tensor] = {}
    influence: dict[str, float] = {}
    if want_norms or needs_blocks:
        if calibration is None:
            raise ConfigError("structured pruning with criterion 'wanda' or blocks > 0 needs calibration data: "
                              "prune_(model, config, calibration=batches)")
        norms, influence = _calibrate(model, chosen, calibration, forward, want_norms)
    plan = _plan_blocks(blocks, config, influence, skeleton)
    removed = [n for n, keep in plan.items() if len(keep) == 0]
    for s in chosen:
        if s.kind == "block" or any(s.name.startswith(f"{b}.") for b in removed):
            continue
        k = _kept(s, config)
        if skeleton or k == s.units:
            plan[s.name] = torch.arange(k)
        else:
            plan[s.name] = torch.topk(_scores(model, s, config.criterion, norms), k).indices.sort().values
    if note:
        skipped.append(("", note))
    return structures, plan, skipped


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

    With ``criterion='wanda'``, the consumers' input norms are measured on ``calibration`` in one pass, together
    with the blocks' influence, on the model before any cut.
    """
    structures, plan, skipped = plan_structured(model, config, filter, calibration=calibration, forward=forward,
                                                skeleton=skeleton)
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
            inside = next((s for s in structures if name in s.modules and s.name in plan), None)
            report.skipped.append((name, f"in {inside.name}, kept whole (its fraction keeps every unit)" if inside
                                   else "not part of a structure this pruner removes units from (heads, FFN neurons, "
                                        "conv channels, blocks): left as is"))
    return report
