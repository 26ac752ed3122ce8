"""The cost of a text classifier: latency, throughput, memory (its quality: ``text_outputs`` + ``METRICS``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nnforge.hardware import compare, energy_per_call, peak_memory_mb, profile

__all__ = ["cost", "cost_side_by_side", "latency_b1_ms"]


def _forward_fns(model: Any, texts: list[str]) -> tuple[Callable[[], Any], Callable[[], Any], int]:
    one = model.tokenize(texts[:1])
    batch = model.tokenize(texts[:32])
    return (lambda: model(one["input_ids"], one["attention_mask"]),
            lambda: model(batch["input_ids"], batch["attention_mask"]), int(batch["input_ids"].shape[0]))


def latency_b1_ms(model: Any, texts: list[str], repeats: int = 20) -> float:
    """Median batch-1 latency (ms) of the forward pass on the first text, tokenised beforehand."""
    with torch.inference_mode():
        return profile(_forward_fns(model, texts)[0], warmup=3, repeats=repeats).median_ms


def cost(model: Any, texts: list[str], repeats: int = 30) -> dict[str, Any]:
    """Batch-1 latency (p50/p95, ms), batch-32 throughput (texts/s) and peak extra memory (MB).

    Tokenisation is done once beforehand: the figures are the model's forward pass alone.
    """
    model.eval()
    b1, b32, n = _forward_fns(model, texts)
    p1 = profile(b1, warmup=5, repeats=repeats)
    p32 = profile(b32, warmup=2, repeats=max(5, repeats // 3))
    return {"latency_b1_ms": p1.median_ms, "latency_b1_p95_ms": p1.p95_ms, "latency_b1_iqr_ms": p1.iqr_ms,
            "throughput_b32": n / (p32.median_ms / 1e3), "peak_memory_mb": peak_memory_mb(b32)}


def cost_side_by_side(models: dict[str, Any], texts: list[str], repeats: int = 30) -> dict[str, dict[str, Any]]:
    """:func:`cost` for several models, timed interleaved (A B A B …) so that noise hits all alike, plus each
    one's ``energy_j_per_inference`` (batch 1; :func:`~nnforge.hardware.energy_per_call`: RAPL counters where
    readable, else an estimate from CPU time, as :func:`~nnforge.hardware.energy_source` says)."""
    fns = {k: _forward_fns(m.eval(), texts) for k, m in models.items()}
    p1 = compare({k: f[0] for k, f in fns.items()}, warmup=5, repeats=repeats)
    p32 = compare({k: f[1] for k, f in fns.items()}, warmup=2, repeats=max(5, repeats // 3))
    out = {}
    for k, (_, b32, n) in fns.items():
        out[k] = {"latency_b1_ms": p1[k].median_ms, "latency_b1_p95_ms": p1[k].p95_ms,
                  "latency_b1_iqr_ms": p1[k].iqr_ms, "throughput_b32": n / (p32[k].median_ms / 1e3),
                  "peak_memory_mb": peak_memory_mb(b32),
                  "energy_j_per_inference": energy_per_call(fns[k][0], calls=repeats).joules}
    return out

