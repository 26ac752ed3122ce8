"""Apply W8A8: int8 per-channel weights, int8 activations, optional SmoothQuant migration."""

from __future__ import annotations

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
from nnforge.compress.quantize.kernels import quantize_weight
from nnforge.compress.quantize.w8a8.config import W8A8Config
from nnforge.compress.quantize.weight_only.apply import home_device
from nnforge.compress.quantize.weight_only.layer import QUANTIZED_MODULES, QuantizedLinear
from nnforge.errors import ConfigError

__all__ = ["apply_w8a8"]


def _needs_data(config: W8A8Config) -> bool:
    return config.activations == "static" or config.smoothing != "none" or config.calibrator == "gptq"


@register_transform(W8A8Config, kind="quantize", needs_data=_needs_data)
def apply_w8a8(model: nn.Module, config: W8A8Config, filter: ModuleFilter | None = None, *,
               calibration: Iterable[Any] | None = None, forward: Any = None, skeleton: bool = False,
               progress: Any = None) -> TransformReport:
    """Replace every Linear by a :class:`QuantizedLinear` with int8 weights and int8 activations.

    Static activation scales and SmoothQuant need ``calibration`` batches (``forward(model, batch)``). Layers
    that read the very same input tensor (an attention block's query, key and value projections) get one
    SmoothQuant scale, computed from all their weights as in the SmoothQuant reference: their inputs are then
    scaled alike, and an exporter can run them as one matmul.
    """
    report = TransformReport(f"w8a8:{config.activations}:{config.smoothing}", config.to_dict())
    targets = []
    for name, mod, others in candidates(model, filter, report, (nn.Linear,), "W8A8"):
        if isinstance(mod, nn.Linear):
            targets.append((name, mod, others))
        elif isinstance(mod, QUANTIZED_MODULES):
            report.skipped.append((name, "already quantized"))
        elif any(True for _ in mod.parameters(recurse=False)):
            report.skipped.append((name, f"{type(mod).__name__} is not handled by W8A8 (Linear layers are)"))
    targets = drop_partial_ties(model, targets, report)
    needs_data = _needs_data(config)
    stats: dict[str, Any] = {}
    if needs_data and not skeleton and targets:
        if calibration is None:
            raise ConfigError("W8A8 with static activations, SmoothQuant or GPTQ needs calibration data: "
                              "quantize_(model, config, calibration=batches)")
        from nnforge.compress.quantize.calibrate import collect_stats

        stats = collect_stats(model, calibration, modules=[t[0] for t in targets], forward=forward)
    smooth = config.smoothing == "smoothquant"
    joint: dict[str, torch.Tensor] = {}  # module name -> the SmoothQuant scale of its shared-input group
    if smooth and not skeleton:
        from nnforge.compress.quantize.calibrate import smooth_scales

        groups: dict[str, list[str]] = {}
        names = {t[0] for t in targets}
        for name, *_ in targets:
            owner = stats[name].shared_with
            groups.setdefault(owner if owner in names else name, []).append(name)
        mods = {t[0]: t[1] for t in targets}
        for owner, members in groups.items():
            w_all = torch.cat([mods[n].weight.detach().float().cpu() for n in members])  # stats are on the CPU
            s_group = smooth_scales(stats[owner].abs_max, w_all, config.alpha)
            joint.update({n: s_group for n in members})
    replacements = []
    for i, (name, mod, others) in enumerate(targets):
        # packing runs on the CPU, and the layer then goes where the weight was; a skeleton needs only shapes
        # (load_state_dict fills it), so it reads no values: its model may be a shapes-only (meta) one
        w = torch.zeros(mod.weight.shape) if skeleton else mod.weight.detach().float().cpu()
        scale = None
        if smooth:
            scale = joint[name] if not skeleton else torch.ones(w.shape[1])
        if not skeleton and not torch.isfinite(w).all():
            raise ConfigError(f"{name}: the weight holds NaN or infinite values; nothing was quantized")
        w_in = w * scale if scale is not None else w
        if config.calibrator == "gptq" and not skeleton:
            from nnforge.compress.quantize.calibrate import gptq

            h = stats[name].hessian
            if scale is not None:  # the layer sees x / s: H of the smoothed inputs is diag(1/s) H diag(1/s)
                inv = 1.0 / scale.double()
                h = h * inv[:, None] * inv[None, :]
            packed = gptq(w_in, h, "int8", None, damp=config.damp)
        else:
            packed = quantize_weight(w_in, "int8", None)
        new = QuantizedLinear.from_packed(packed, mod.bias, input_scale=scale, kernel=config.kernel,
                                          act_quant=config.activations)
        if config.activations == "static" and not skeleton and new.act_scale is not None:
            amax = stats[name].abs_max / (scale if scale is not None else 1.0)
            if not float(amax.max()) > 0:
                raise ConfigError(f"{name}: every calibration input of this layer was zero, so no static "
                                  "activation scale can be set; calibrate on representative data or use "
                                  "activations='dynamic'")
            new.act_scale.fill_(float(amax.max()) / 127.0)
        err = 0.0 if skeleton else relative_error(w, new.dequantize())
        new = new.to(home_device(mod.weight, skeleton))
        detail = (f"int8 row ({config.calibrator}), int8 {config.activations} activations"
                  + (f", smoothquant alpha {config.alpha}" if smooth else "")
                  + alias_note(others))
        report.changed.append(ModuleChange(name, "Linear", tensor_bytes(mod.weight, mod.bias), new.nbytes, err,
                                           detail, list(others)))
        replacements.append((name, others, new))
        if progress:
            progress(i + 1, len(targets))
    for name, others, new in replacements:
        replace_all(model, name, others, new)
    return report
