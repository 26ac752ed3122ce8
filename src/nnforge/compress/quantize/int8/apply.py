"""Apply int8 weight-only quantization to every Linear / Embedding of a model."""

from __future__ import annotations

import torch
from torch import nn

from nnforge.compress._transform import ModuleChange, ModuleFilter, TransformReport, register_transform, tensor_bytes
from nnforge.compress.quantize.int8.config import Int8WeightOnlyConfig
from nnforge.compress.quantize.int8.layer import Int8Embedding, Int8Linear

__all__ = ["apply_int8_weight_only"]

_KEPT_FLOAT = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.RMSNorm)


def _rel_error(w: torch.Tensor, deq: torch.Tensor) -> float:
    return float((w.detach().float() - deq).norm() / w.detach().float().norm().clamp_min(1e-12))


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


@register_transform(Int8WeightOnlyConfig)
def apply_int8_weight_only(model: nn.Module, config: Int8WeightOnlyConfig,
                           filter: ModuleFilter | None = None) -> TransformReport:
    report = TransformReport("int8-weight-only", config.to_dict())
    replacements: list[tuple[str, nn.Module, nn.Module]] = []
    for name, mod in model.named_modules():
        if not name or (filter is not None and not filter(name, mod)):
            continue
        if isinstance(mod, nn.Linear) and "linear" in config.modules:
            new: nn.Module = Int8Linear.from_float(mod)
        elif isinstance(mod, nn.Embedding) and "embedding" in config.modules:
            if mod.max_norm is not None:
                report.skipped.append((name, "Embedding with max_norm renormalises its weights; left in fp32"))
                continue
            new = Int8Embedding.from_float(mod)
        elif isinstance(mod, (Int8Linear, Int8Embedding)):
            report.skipped.append((name, "already int8"))
            continue
        elif any(True for _ in mod.parameters(recurse=False)):
            why = ("normalisation layers stay in floating point" if isinstance(mod, _KEPT_FLOAT)
                   else f"{type(mod).__name__} is not handled by int8-weight-only (Linear and Embedding are)")
            report.skipped.append((name, why))
            continue
        else:
            continue
        old_w = mod.weight
        before = tensor_bytes(old_w, getattr(mod, "bias", None))
        after = tensor_bytes(*[b for b in new.buffers()])
        report.changed.append(ModuleChange(name, type(mod).__name__, before, after,
                                           _rel_error(old_w, new.dequantize())))  # type: ignore[operator]
        replacements.append((name, mod, new))
    for name, _old, new in replacements:
        _set_child(model, name, new)
    return report
