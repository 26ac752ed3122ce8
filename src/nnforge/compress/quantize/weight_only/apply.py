"""Apply weight-only quantization (any format, any calibrator) to a model's Linear, Embedding and Conv2d layers."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from nnforge.compress._transform import (
    ModuleChange,
    ModuleFilter,
    TransformReport,
    alias_note,
    candidates,
    drop_partial_ties,
    register_transform,
    relative_error,
    replace_all,
    tensor_bytes,
)
from nnforge.compress.quantize.kernels import PackedWeight
from nnforge.compress.quantize.kernels._format import format_spec
from nnforge.compress.quantize.weight_only.config import WeightOnlyConfig
from nnforge.compress.quantize.weight_only.layer import (
    QUANTIZED_MODULES,
    QuantizedConv2d,
    QuantizedEmbedding,
    QuantizedLinear,
)
from nnforge.errors import ConfigError

__all__ = ["apply_weight_only", "quantize_matrix", "measure_verdicts", "KEPT_FLOAT"]

KEPT_FLOAT = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.RMSNorm)


def quantize_matrix(w: torch.Tensor, fmt: str, group_size: int | None, symmetric: bool, calibrator: str,
                    stats: Any = None, damp: float = 0.01, act_order: bool = False,
                    options: dict[str, Any] | None = None) -> tuple[PackedWeight, torch.Tensor | None]:
    """Quantize one ``(N, K)`` matrix with the registered ``calibrator``; returns the packed weight and the
    input scale of a calibrator that rescales input channels (AWQ), else ``None``."""
    from nnforge.compress.quantize.calibrate import CALIBRATORS, CalibrationJob

    spec = CALIBRATORS.get(calibrator, where="calibrator")
    if spec.needs_data and stats is None:
        raise ConfigError(f"calibrator {calibrator!r} needs calibration data: "
                          "quantize_(model, config, calibration=batches)")
    job = CalibrationJob(w.detach().float(), fmt, group_size, symmetric, stats if spec.needs_data else None,
                         {"damp": damp, "act_order": act_order, **(options or {})})
    return spec.quantize(job)


def _calibrator(name: str) -> Any:
    from nnforge.compress.quantize.calibrate import CALIBRATORS

    return CALIBRATORS.get(name, where="calibrator")


def _group_for(k: int, group_size: int | None) -> int | None:
    """The configured group size, or per-row scales when it does not divide ``k``."""
    return group_size if group_size is None or k % group_size == 0 else None


_HANDLED = {"linear": nn.Linear, "conv": nn.Conv2d, "embedding": nn.Embedding}


def _targets(model: nn.Module, config: WeightOnlyConfig, filter: ModuleFilter | None,
             report: TransformReport) -> list[tuple[str, Any, str, list[str]]]:
    out: list[tuple[str, Any, str, list[str]]] = []
    handled = tuple(_HANDLED[k] for k in config.modules if k in _HANDLED)
    for name, mod, others in candidates(model, filter, report, handled, "weight-only quantization"):
        planned = {config.plan[n] for n in (name, *others) if n in config.plan}
        if len(planned) > 1:
            raise ConfigError(f"the mixed-precision plan gives {name} (also registered as {others[0]}) two "
                              f"formats: {sorted(planned)}; one module gets one format")
        fmt = planned.pop() if planned else None
        if isinstance(mod, QUANTIZED_MODULES):
            report.skipped.append((name, "already quantized"))
        elif isinstance(mod, nn.Linear) and "linear" in config.modules:
            out.append((name, mod, fmt or config.fmt, others))
        elif isinstance(mod, nn.Conv2d) and "conv" in config.modules:
            out.append((name, mod, fmt or config.fmt, others))
        elif isinstance(mod, nn.Embedding) and "embedding" in config.modules:
            if mod.max_norm is not None:
                report.skipped.append((name, "Embedding with max_norm renormalises its weights; left in fp32"))
            else:
                out.append((name, mod, fmt or config.embedding_fmt, others))
        elif any(True for _ in mod.parameters(recurse=False)):
            why = ("normalisation layers stay in floating point" if isinstance(mod, KEPT_FLOAT)
                   else f"{type(mod).__name__} is not handled by weight-only quantization "
                        f"(Linear, Embedding and Conv2d are; modules={list(config.modules)})")
            report.skipped.append((name, why))
    names = {n for n, _ in model.named_modules(remove_duplicate=False)}
    unknown = sorted(set(config.plan) - names)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"the mixed-precision plan names {unknown[0]!r}, which is not a module of this model{hint}")
    report.skipped.extend((t[0], "kept in fp32 by the mixed-precision plan") for t in out if t[2] == "fp32")
    return drop_partial_ties(model, [t for t in out if t[2] != "fp32"], report)


def _needs_data(config: WeightOnlyConfig) -> bool:
    return bool(_calibrator(config.calibrator).needs_data)


@register_transform(WeightOnlyConfig, kind="quantize", needs_data=_needs_data)
def apply_weight_only(model: nn.Module, config: WeightOnlyConfig, filter: ModuleFilter | None = None, *,
                      calibration: Iterable[Any] | None = None, forward: Any = None, skeleton: bool = False,
                      progress: Any = None) -> TransformReport:
    """Replace Linear / Embedding / Conv2d layers by packed quantized ones (see :class:`WeightOnlyConfig`).

    Args:
        calibration: batches for GPTQ / AWQ statistics (each passed to ``forward(model, batch)``, default
            ``model(batch)``).
        skeleton: build layers of the right shapes without quantizing (loading a saved model fills them).
        progress: ``progress(done, total)`` called after each layer.
    """
    report = TransformReport(f"weight-only:{config.fmt}:{config.calibrator}", config.to_dict())
    targets = _targets(model, config, filter, report)
    stats: dict[str, Any] = {}
    if _needs_data(config) and not skeleton:
        if calibration is None:
            raise ConfigError(f"calibrator {config.calibrator!r} needs calibration data: "
                              "quantize_(model, config, calibration=batches)")
        from nnforge.compress.quantize.calibrate import collect_stats

        stats = collect_stats(model, calibration, modules=[t[0] for t in targets if isinstance(t[1], nn.Linear)],
                              forward=forward)
    replacements = []
    seen: dict[int, str] = {}
    for i, (name, mod, fmt, others) in enumerate(targets):
        new, detail, err = _quantize_module(name, mod, fmt, config, stats.get(name), skeleton)
        before = tensor_bytes(mod.weight, getattr(mod, "bias", None))
        if id(mod.weight) in seen:  # a tie: the float matrix was counted once; each side now stores its own copy
            before = tensor_bytes(getattr(mod, "bias", None))
            detail += f"; weight tied with {seen[id(mod.weight)]}: quantized as its own copy (the tie is not kept)"
        seen.setdefault(id(mod.weight), name)
        detail += alias_note(others)  # one module under several names: every name gets the one quantized module
        report.changed.append(ModuleChange(name, type(mod).__name__, before, new.nbytes, err, detail, list(others)))
        replacements.append((name, others, new))
        if progress:
            progress(i + 1, len(targets))
    for name, others, new in replacements:
        replace_all(model, name, others, new)
    return report


def _quantize_module(name: str, mod: Any, fmt: str, config: WeightOnlyConfig, stats: Any,
                     skeleton: bool) -> tuple[Any, str, float]:
    weight = mod.weight.detach()
    is_emb = isinstance(mod, nn.Embedding)
    matrix = weight.reshape(weight.shape[0], -1)
    if not skeleton:  # packing (and GPTQ/HQQ/AWQ) runs on the CPU; the packed layer then goes where the weight was
        matrix = matrix.cpu()
    gs = config.embedding_group_size if is_emb else config.group_size
    group = _group_for(matrix.shape[1], gs)
    symmetric = (config.embedding_symmetric if is_emb else config.symmetric) or not format_spec(fmt).asymmetric_ok
    # GPTQ / AWQ need a Linear's input statistics; embeddings and convs get RTN, or HQQ when asked (data-free)
    data_free = not _calibrator(config.calibrator).needs_data
    calibrator = config.calibrator if isinstance(mod, nn.Linear) or (data_free and not is_emb) else "rtn"
    detail = f"{fmt} group {group or 'row'} {'sym' if symmetric else 'asym'} {calibrator}"
    if group != gs:
        detail += f" (group {gs} does not divide K={matrix.shape[1]}: per-row scales)"
    if not skeleton and not torch.isfinite(matrix).all():
        raise ConfigError(f"{name}: the weight holds NaN or infinite values; nothing was quantized")
    if skeleton:
        packed, scale = _empty(fmt, matrix.shape, group, symmetric), None
        if _calibrator(calibrator).input_scale:
            scale = torch.ones(matrix.shape[1])
    else:
        packed, scale = quantize_matrix(matrix, fmt, group, symmetric, calibrator, stats, config.damp,
                                        config.act_order, config.calibrator_options)
    if is_emb:
        new: Any = QuantizedEmbedding.from_packed(packed, mod.padding_idx, dtype=weight.dtype)
    elif isinstance(mod, nn.Conv2d):
        new = QuantizedConv2d(mod, fmt, group, symmetric)
        new.weight_packed.set_packed(packed)
    else:
        new = QuantizedLinear.from_packed(packed, mod.bias, input_scale=scale, kernel=config.kernel,
                                          act_quant=config.act_quant)
    err = 0.0 if skeleton else relative_error(matrix, new.dequantize())
    return new.to(home_device(weight, skeleton)), detail, err


def home_device(weight: torch.Tensor, skeleton: bool) -> torch.device:
    """Where a packed layer goes: its weight's device, except that a skeleton of a shapes-only (meta) model
    is built on the CPU, so that ``load_state_dict`` can fill it."""
    return torch.device("cpu") if skeleton and weight.is_meta else weight.device


def _empty(fmt: str, shape: torch.Size, group: int | None, symmetric: bool) -> PackedWeight:
    """Zero buffers of the right shapes (a skeleton: the saved state fills them), with no quantization work."""
    from nnforge.compress.quantize.weight_only.layer import _packed_shapes

    dshape, sshape = _packed_shapes(fmt, shape[0], shape[1], group)
    zeros = None if symmetric else torch.zeros(sshape, dtype=torch.uint8)
    return PackedWeight(fmt, torch.zeros(dshape, dtype=torch.uint8), torch.zeros(sshape, dtype=torch.float16), zeros,
                        shape[0], shape[1], group)


def measure_verdicts(model: nn.Module, batch_sizes: tuple[int, ...] = (1, 8), repeats: int = 30,
                     alpha: float = 0.05) -> dict[str, Any]:
    """Time every :class:`QuantizedLinear` against fp32 ``F.linear`` on its dequantized weight, interleaved.

    Stores ``layer.verdict[batch] = {"quantized_ms", "fp32_ms", "speedup", "speedup_ci", "p_value",
    "verdict"}`` (medians in ms; ``verdict`` is ``"faster"`` / ``"slower"`` / ``"not significant"``, from
    :func:`nnforge.hardware.speed_verdict` at level ``alpha``) and returns them by layer name. A layer that is
    not faster at batch 1 is a candidate to keep in higher precision.
    """
    import torch.nn.functional as F

    from nnforge.hardware import time_verdict

    out: dict[str, Any] = {}
    with torch.inference_mode():
        for name, mod in model.named_modules():
            if not isinstance(mod, QuantizedLinear):
                continue
            w = mod.dequantize()
            bias = mod.bias
            for b in batch_sizes:
                x = torch.randn(b, mod.in_features)
                v = time_verdict(functools.partial(mod, x), functools.partial(F.linear, x, w, bias), warmup=1,
                                 repeats=repeats, alpha=alpha)
                mod.verdict[b] = {"quantized_ms": v.pop("candidate_ms"), "fp32_ms": v.pop("baseline_ms"), **v}
            out[name] = dict(mod.verdict)
    return out
