"""Apply unstructured or N:M pruning: zero weights in place, chosen by a registered criterion."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import nn

from nnforge.compress._transform import (
    ModuleChange,
    ModuleFilter,
    TransformReport,
    alias_note,
    candidates,
    register_transform,
    relative_error,
    tensor_bytes,
    weight_holders,
)
from nnforge.compress.prune.criteria import CRITERIA, CriterionSpec, Pattern, PruneJob
from nnforge.compress.prune.unstructured.config import NMConfig, UnstructuredConfig, _PruneOptions
from nnforge.errors import ConfigError

__all__ = ["apply_unstructured", "apply_nm", "prune_targets", "sparsity_of", "weight_of"]

Target = tuple[str, nn.Module, list[str]]


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or (s.endswith(".") and name.startswith(s)) for s in skip)


def prune_targets(model: nn.Module, config: _PruneOptions, filter: ModuleFilter | None,
                  report: TransformReport) -> list[Target]:
    """The layers ``config`` prunes; every other module holding parameters is reported as skipped, with why."""
    spec = CRITERIA.get(config.criterion)
    handled = (nn.Linear, nn.Conv2d) if "conv" in config.modules else (nn.Linear,)
    holders = weight_holders(model)
    found: list[Target] = []
    for name, mod, others in candidates(model, filter, report, (nn.Linear, nn.Conv2d), "pruning"):
        if not isinstance(mod, handled):
            if any(True for _ in mod.parameters(recurse=False)):
                kinds = " and ".join(("Linear", "Conv2d")[: len(handled)])
                hint = " (add 'conv' to modules to prune it)" if isinstance(mod, nn.Conv2d) else ""
                report.skipped.append((name, f"{type(mod).__name__} is not pruned by this config ({kinds} layers "
                                             f"are){hint}"))
            continue
        if any(_skipped(n, config.skip) for n in (name, *others)):
            report.skipped.append((name, "listed in the config's skip: left dense"))
        elif spec.needs_data and isinstance(mod, nn.Conv2d) and mod.groups != 1:
            report.skipped.append((name, f"criterion {spec.name} reads a conv's inputs as one matrix of patches, and "
                                         f"this Conv2d has groups={mod.groups}: left dense (prune it with criterion "
                                         "'magnitude' in a second call)"))
        else:
            found.append((name, mod, others))
    chosen = {t[0] for t in found}
    keep = []
    for t in found:
        tied = [h for h in holders.get(id(t[1].weight), []) if h != t[0] and h not in t[2]]
        if tied and not set(tied) <= chosen:
            report.skipped.append((t[0], f"weight tied with {tied[0]}, which is not pruned: left dense (zeroing "
                                         "it here would zero that module's weight too)"))
        else:
            keep.append(t)
    return keep


def weight_of(mod: nn.Module) -> torch.Tensor:
    """The ``weight`` of a Linear or Conv2d, typed (``nn.Module.__getattr__`` is typed as returning anything)."""
    return cast(torch.Tensor, mod.weight)


def _matrix(mod: nn.Module) -> torch.Tensor:
    w = weight_of(mod).detach()
    return w.float().cpu().reshape(w.shape[0], -1).clone()  # a copy: the weight is overwritten in place later


def _stats(model: nn.Module, spec: CriterionSpec, targets: list[Target], calibration: Iterable[Any] | None,
           forward: Callable[[nn.Module, Any], Any] | None) -> dict[str, Any]:
    if not spec.needs_data or not targets:
        return {}
    if calibration is None:
        raise ConfigError(f"pruning criterion {spec.name!r} needs calibration data: "
                          f"prune_(model, config, calibration=batches) (or use criterion='magnitude')")
    from nnforge.compress.prune.unstructured.im2col import collect_conv_stats
    from nnforge.compress.quantize.calibrate import collect_stats

    linears = [t[0] for t in targets if isinstance(t[1], nn.Linear)]
    convs = {t[0]: cast(nn.Conv2d, t[1]) for t in targets if isinstance(t[1], nn.Conv2d)}
    if convs:  # a conv is pruned as its (out, in·kh·kw) matrix, its inputs unfolded into patches (im2col)
        calibration = list(calibration)  # read twice: the linears' pass and the convs'
    stats: dict[str, Any] = collect_stats(model, calibration, modules=linears, forward=forward) if linears else {}
    if convs:
        stats.update(collect_conv_stats(model, calibration, convs, forward=forward))
    return stats


def _global_sparsities(spec: CriterionSpec, targets: list[Target], stats: dict[str, Any], sparsity: float,
                       options: dict[str, Any]) -> dict[str, float]:
    """Each layer's share of the ``sparsity * total`` lowest-scoring weights of all ``targets`` together."""
    scores = [spec.score(PruneJob(_matrix(m), Pattern(sparsity), stats.get(n), options)).reshape(-1)
              for n, m, _ in targets]
    sizes = [s.numel() for s in scores]
    drop = round(sparsity * sum(sizes))
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    lowest = torch.argsort(torch.cat(scores), stable=True)[:drop]
    counts = torch.bincount(owner[lowest], minlength=len(sizes))
    return {t[0]: int(c) / size for t, c, size in zip(targets, counts, sizes, strict=True)}


def prune_layers(model: nn.Module, config: _PruneOptions, filter: ModuleFilter | None, method: str,
                 patterns: Callable[[list[Target], dict[str, Any]], dict[str, Pattern]], *,
                 calibration: Iterable[Any] | None = None, forward: Callable[[nn.Module, Any], Any] | None = None,
                 skeleton: bool = False, progress: Callable[[int, int], None] | None = None) -> TransformReport:
    """Zero weights of every target layer as ``patterns(targets, stats)`` says, with ``config.criterion``."""
    report = TransformReport(method, config.to_dict())
    spec = CRITERIA.get(config.criterion)
    targets = prune_targets(model, config, filter, report)
    if skeleton:  # a pruned model has the dense shapes: its saved weights carry the zeros
        for name, mod, others in targets:
            nbytes = tensor_bytes(mod.weight, mod.bias)
            report.changed.append(ModuleChange(name, type(mod).__name__, nbytes, nbytes, 0.0,
                                               "skeleton: shapes unchanged" + alias_note(others), list(others)))
        return report
    sequential = config.sequential and spec.needs_data
    if sequential and calibration is not None:
        calibration = list(calibration)  # read once per layer
    stats = _stats(model, spec, targets, calibration, forward)
    options = {"damp": config.damp, "block_size": config.block_size}
    chosen = patterns(targets, stats)
    for i, (name, mod, others) in enumerate(targets):
        pattern = chosen.get(name)
        if sequential and i and pattern is not None:  # this layer's inputs as the pruned layers before it make them
            stats.update(_stats(model, spec, [(name, mod, others)], calibration, forward))
        outcome = _prune_one(name, mod, others, spec, pattern, stats.get(name), options)
        if isinstance(outcome, str):
            report.skipped.append((name, outcome))
        else:
            report.changed.append(outcome)
        if progress:
            progress(i + 1, len(targets))
    return report


def _prune_one(name: str, mod: nn.Module, others: list[str], spec: CriterionSpec, pattern: Pattern | None,
               stats: Any, options: dict[str, Any]) -> ModuleChange | str:
    """Prune one layer in place; its :class:`ModuleChange`, or why it was left dense."""
    if pattern is None or pattern.target == 0.0:
        return "its planned sparsity is 0: left dense"
    w = _matrix(mod)
    if not torch.isfinite(w).all():
        raise ConfigError(f"{name}: the weight holds NaN or infinite values; nothing was pruned")
    if pattern.m is not None and w.shape[1] % pattern.m:
        return f"{w.shape[1]} inputs are not a multiple of {pattern.m}: no {pattern.describe()} pattern fits, left dense"
    new = spec.prune(PruneJob(w.clone(), pattern, stats, options))
    weight = weight_of(mod)
    with torch.no_grad():
        weight.copy_(new.reshape(weight.shape).to(weight.dtype))
    zeros, total = int((new == 0).sum()), new.numel()
    nbytes = tensor_bytes(weight, getattr(mod, "bias", None))
    detail = (f"sparsity {zeros / total:.4f} ({zeros} of {total} weights zero), {pattern.describe()}, "
              f"criterion {spec.name}; stored dense: the zeros save no bytes or time until a sparse format "
              "stores and runs them" + alias_note(others))
    return ModuleChange(name, type(mod).__name__, nbytes, nbytes, relative_error(w, new), detail, list(others))


def _compare(config: UnstructuredConfig, spec: CriterionSpec) -> Any:
    return spec.compare if config.compare == "auto" else config.compare


def _needs_data(config: _PruneOptions) -> bool:
    return CRITERIA.get(config.criterion).needs_data


@register_transform(UnstructuredConfig, kind="prune", needs_data=_needs_data)
def apply_unstructured(model: nn.Module, config: UnstructuredConfig, filter: ModuleFilter | None = None,
                       **inputs: Any) -> TransformReport:
    """Zero ``config.sparsity`` of each pruned layer's weights (or of all of them, ``scope="global"``).

    Args:
        inputs: ``calibration=`` batches (run as ``forward(model, batch)``) for a data-driven criterion,
            ``skeleton=True`` to build a saved pruned model's layers (a no-op: the shapes are dense),
            ``progress(done, total)``.
    """
    spec = CRITERIA.get(config.criterion)

    def patterns(targets: list[Target], stats: dict[str, Any]) -> dict[str, Pattern]:
        if config.scope == "global":
            options = {"damp": config.damp, "block_size": config.block_size}
            ratios = _global_sparsities(spec, targets, stats, config.sparsity, options)
            return {n: Pattern(s, compare="layer") for n, s in ratios.items()}
        compare = _compare(config, spec)
        return {n: Pattern(config.plan.get(n, config.sparsity), compare=compare) for n, _, _ in targets}

    method = f"prune:unstructured:{config.criterion}:{config.scope}"
    return prune_layers(model, config, filter, method, patterns, **inputs)


@register_transform(NMConfig, kind="prune", needs_data=_needs_data)
def apply_nm(model: nn.Module, config: NMConfig, filter: ModuleFilter | None = None,
             **inputs: Any) -> TransformReport:
    """Keep ``n`` of every ``m`` consecutive input weights of each row of each pruned layer."""

    def patterns(targets: list[Target], stats: dict[str, Any]) -> dict[str, Pattern]:
        return {n: Pattern(n=config.n, m=config.m, compare="row") for n, _, _ in targets}

    return prune_layers(model, config, filter, f"prune:{config.n}:{config.m}:{config.criterion}", patterns, **inputs)


def sparsity_of(model: nn.Module, modules: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)) -> dict[str, float]:
    """The fraction of exact zeros in the weight of every ``modules`` layer, as measured now."""
    return {n: float((weight_of(m) == 0).float().mean()) for n, m in model.named_modules()
            if isinstance(m, modules) and isinstance(getattr(m, "weight", None), torch.Tensor)}
