"""Per-layer sensitivity: what each candidate format costs a Linear layer in output error, bytes and time."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nnforge.errors import ConfigError

__all__ = ["LayerOption", "layer_sensitivity"]


@dataclass
class LayerOption:
    """One candidate format for one layer, as measured."""

    fmt: str
    error: float  # ||X Wᵀ − X Ŵᵀ||² / ||X Wᵀ||² on the calibration inputs (or loss increase, see below)
    nbytes: int  # packed weight + scales (+ zero points); fp32 bytes for "fp32"
    params: int
    latency_ms: float | None = None  # batch-1 time of the layer in this format, when measured

    @property
    def bits(self) -> float:
        return 8.0 * self.nbytes / self.params


def layer_sensitivity(model: nn.Module, candidates: Sequence[str], calibration: Iterable[Any], *,
                      forward: Callable[[nn.Module, Any], Any] | None = None, group_size: int | None = 64,
                      symmetric: bool = True, calibrator: str = "rtn",
                      loss_fn: Callable[[nn.Module], float] | None = None, measure_latency: bool = False,
                      modules: Sequence[str] | None = None) -> dict[str, list[LayerOption]]:
    """Measure every candidate format on every Linear layer (``"fp32"`` may be a candidate).

    The error is the layer's relative output error on its calibration inputs; with ``loss_fn(model)`` it is
    instead the increase of that loss when only this layer is quantized (slower, end to end). With
    ``measure_latency`` each option also gets its batch-1 latency (median of interleaved repeats).
    """
    from nnforge.compress.quantize.calibrate import collect_stats
    from nnforge.compress.quantize.kernels._format import format_spec
    from nnforge.compress.quantize.weight_only.apply import quantize_matrix
    from nnforge.compress.quantize.weight_only.layer import QuantizedLinear

    if isinstance(candidates, str) or not list(candidates):
        raise ConfigError(f"The 'candidates' parameter must be a non-empty list of formats (e.g. ['int8', 'int4']). "
                          f"Got {candidates!r} instead.")
    names = list(modules) if modules is not None else [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError("layer_sensitivity found no nn.Linear layer to measure")
    stats = collect_stats(model, calibration, modules=names, forward=forward)
    base_loss = loss_fn(model) if loss_fn is not None else None
    out: dict[str, list[LayerOption]] = {}
    for name in names:
        lin = model.get_submodule(name)
        assert isinstance(lin, nn.Linear)
        w = lin.weight.detach().float().cpu()  # the statistics and the packing are on the CPU, wherever the model is
        x = stats[name].sample.float()
        ref = x @ w.T
        options: list[LayerOption] = []
        layers: list[nn.Module] = []
        for fmt in candidates:
            if fmt == "fp32":
                options.append(LayerOption("fp32", 0.0, w.numel() * 4, w.numel()))
                layers.append(lin if lin.weight.device.type == "cpu" else copy.deepcopy(lin).cpu())  # timed on the CPU
                continue
            group = group_size if group_size is None or w.shape[1] % group_size == 0 else None
            sym = symmetric or not format_spec(fmt).asymmetric_ok
            packed, scale = quantize_matrix(w, fmt, group, sym, calibrator, stats[name])
            q = QuantizedLinear.from_packed(packed, lin.bias, input_scale=scale)
            w_hat = q.dequantize()
            if loss_fn is not None:
                error = _loss_increase(model, name, copy.deepcopy(q).to(lin.weight.device), loss_fn) - (base_loss or 0.0)
            else:
                error = float((ref - x @ w_hat.T).square().sum() / ref.square().sum().clamp_min(1e-30))
            options.append(LayerOption(fmt, error, packed.nbytes, w.numel()))
            layers.append(q)
        if measure_latency:
            for option, ms in zip(options, _latencies(layers), strict=True):
                option.latency_ms = ms
        out[name] = options
    return out


def _loss_increase(model: nn.Module, name: str, q: nn.Module, loss_fn: Callable[[nn.Module], float]) -> float:
    from nnforge.compress._transform import set_child

    original = model.get_submodule(name)
    set_child(model, name, q)
    try:
        return float(loss_fn(model))
    finally:
        set_child(model, name, original)


def _latencies(layers: Sequence[Any], repeats: int = 15) -> list[float]:
    """Batch-1 median milliseconds of each of one layer's formats on the CPU (where the packed kernels run),
    timed interleaved (``hardware.compare``), so that a busy moment of a shared machine lands on every format
    alike."""
    from nnforge.hardware import compare

    x = torch.randn(1, int(layers[0].in_features))
    timed = compare({str(i): functools.partial(layer, x) for i, layer in enumerate(layers)}, warmup=1, repeats=repeats)
    return [timed[str(i)].median_ms for i in range(len(layers))]
