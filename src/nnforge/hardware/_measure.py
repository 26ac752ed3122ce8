"""``measure_model``: every hardware objective of a model in one call (latency, throughput, memory, size, energy).

Search objectives and constraints that are hardware measurements (``latency_b1_ms <= 3``, ``size_mb <= 10``)
read their values from this one function, so that two trials, two studies or a trial and a report never
measure the same thing two ways.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnforge.errors import ConfigError
from nnforge.hardware._energy import EnergyMeter
from nnforge.hardware._profile import file_size_mb, peak_memory_mb, profile

__all__ = ["measure_model", "MEASURED_METRICS", "state_dict_size_mb", "tensor_peak_memory_mb"]

# the numeric figures measure_model returns (energy_source is a label beside them)
MEASURED_METRICS = ("latency_b1_ms", "throughput_per_s", "peak_memory_mb", "size_mb", "energy_j_per_inference")


def _caller(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    if isinstance(inputs, torch.Tensor):
        return lambda: model(inputs)
    if isinstance(inputs, Mapping):
        return lambda: model(**inputs)
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        return lambda: model(*inputs)
    raise ConfigError(f"measure_model's example_inputs must be a tensor, a tuple/list of positional inputs or a "
                      f"dict of keyword inputs; got {type(inputs).__name__}")


def _batched(inputs: Any, batch: int) -> Any:
    """The batch-1 example inputs repeated ``batch`` times along dim 0 (tensors only; other values as they are)."""
    def rep(x: Any) -> Any:
        return x.repeat(batch, *([1] * (x.dim() - 1))) if isinstance(x, torch.Tensor) and x.dim() else x
    if isinstance(inputs, torch.Tensor):
        return rep(inputs)
    if isinstance(inputs, Mapping):
        return {k: rep(v) for k, v in inputs.items()}
    return type(inputs)(rep(x) for x in inputs)


def state_dict_size_mb(model: nn.Module) -> float:
    """MB (10^6 bytes) of the model's state written as one safetensors file (tied tensors stored once)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, torch.dtype]] = set()
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), v.numel(), v.dtype)
        if v.numel() and key in seen:
            continue
        seen.add(key)
        tensors[k] = v.detach().contiguous().cpu()
    with tempfile.TemporaryDirectory(prefix="nnforge-size-") as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file(tensors, str(path))
        return file_size_mb(path)


def tensor_peak_memory_mb(fn: Callable[[], Any], model: nn.Module, inputs: Any) -> float | None:
    """Peak MB of live tensors during ``fn()``: the model's parameters and buffers, its inputs and every
    activation alive at the same moment, counted tensor by tensor (torch's ``MemTracker``).

    Unlike the process's resident-memory mark this does not read 0 when the allocator reuses pages it already
    holds, so two small models compare. None where the tracker cannot follow the model (a kernel it cannot
    see into); the caller then falls back to resident memory.
    """
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:  # a torch build without distributed
        return None
    try:
        tracker = MemTracker()
        tracker.track_external(model, *[t for t in _tensors(inputs)])
        with torch.inference_mode(), tracker:
            fn()
        total = sum(float(d.get("Total", 0)) for d in tracker.get_tracker_snapshot("peak").values())
    except Exception:  # noqa: BLE001 -- the tracker is an instrument; a model it cannot follow still runs
        return None
    return total / 1e6 if total > 0 else None


def _tensors(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    values = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (list, tuple)) else []
    return [v for v in values if isinstance(v, torch.Tensor)]


def measure_model(model: nn.Module, example_inputs: Any, *, repeats: int = 20, warmup: int = 3,
                  min_time_s: float = 0.0, throughput_batch: int | None = None,
                  artifact_paths: Sequence[str | os.PathLike[str]] | None = None,
                  watts_per_core: float | None = None) -> dict[str, Any]:
    """Measure a model on this machine, in eval mode under ``torch.inference_mode`` (its mode is restored).

    Args:
        model: the module, on the device it will run on.
        example_inputs: one batch-1 input: a tensor (``model(x)``), a tuple/list (``model(*x)``) or a dict of
            keyword inputs (``model(**x)``).
        repeats, warmup, min_time_s: as :func:`~nnforge.hardware.profile`.
        throughput_batch: measure throughput at this batch (the inputs repeated along dim 0); default None
            takes it from the batch-1 latency.
        artifact_paths: the files the deployed model needs; ``size_mb`` is their total. Default: the
            model's state written as safetensors.
        watts_per_core: the power figure for an energy estimate (see :class:`~nnforge.hardware.EnergyMeter`).

    Returns:
        ``latency_b1_ms`` (median), ``latency_b1_p95_ms``, ``latency_b1_iqr_ms``, ``throughput_per_s``
        (inferences per second), ``throughput_batch``, ``peak_memory_mb`` (weights + inputs + live activations
        at the peak of one batch-1 call, :func:`tensor_peak_memory_mb`; where that tracker cannot follow the
        model, the extra resident memory of the call), ``peak_memory_source`` (``"tensors"`` or ``"rss"``),
        ``peak_rss_extra_mb`` (resident memory above what the process held before, None where unreadable),
        ``size_mb``, ``energy_j_per_inference`` over the timed calls, ``energy_source`` (``"rapl"`` or
        ``"estimate"``), ``energy_watts_per_core`` (the figure an estimate used, else None), ``repeats``.
    """
    if throughput_batch is not None and (isinstance(throughput_batch, bool) or throughput_batch < 1):
        raise ConfigError(f"The 'throughput_batch' parameter of measure_model must be an int in the range "
                          f"[1, inf) or None. Got {throughput_batch!r} instead.")
    meter = EnergyMeter(watts_per_core=watts_per_core)  # checks the power figure before any timing
    was_training = model.training
    model.eval()
    try:
        fn = _caller(model, example_inputs)
        with torch.inference_mode():
            for _ in range(warmup):
                fn()
        with meter:
            prof = profile(fn, warmup=0, repeats=repeats, min_time_s=min_time_s)
        energy = meter.reading
        if throughput_batch is None or throughput_batch == 1:
            throughput = 1e3 / prof.median_ms
        else:
            batched = _caller(model, _batched(example_inputs, throughput_batch))
            throughput = throughput_batch * 1e3 / profile(batched, warmup=1, repeats=max(3, repeats // 4)).median_ms
        rss_extra = peak_memory_mb(fn)
        peak = tensor_peak_memory_mb(fn, model, example_inputs)
    finally:
        model.train(was_training)
    size = file_size_mb(artifact_paths) if artifact_paths else state_dict_size_mb(model)
    return {
        "latency_b1_ms": prof.median_ms,
        "latency_b1_p95_ms": prof.p95_ms,
        "latency_b1_iqr_ms": prof.iqr_ms,
        "throughput_per_s": throughput,
        "throughput_batch": throughput_batch or 1,
        "peak_memory_mb": peak if peak is not None else rss_extra,
        "peak_memory_source": "tensors" if peak is not None else "rss",
        "peak_rss_extra_mb": rss_extra,
        "size_mb": size,
        "energy_j_per_inference": energy.joules / prof.repeats,
        "energy_source": energy.source,
        "energy_watts_per_core": energy.watts_per_core,
        "repeats": prof.repeats,
    }
