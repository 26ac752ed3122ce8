"""Timing with warm-up, repeats, medians and spread; peak memory; size on disk."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnforge.hardware._machine import machine_facts

__all__ = ["Profile", "profile", "compare", "peak_memory_mb", "file_size_mb"]


@dataclass(frozen=True)
class Profile:
    """Timings of one callable, in milliseconds."""

    median_ms: float
    p95_ms: float
    min_ms: float
    iqr_ms: float
    repeats: int
    samples_ms: list[float] = field(repr=False)
    machine: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


def _summarise(samples: list[float], machine: dict[str, Any]) -> Profile:
    s = sorted(samples)
    q = statistics.quantiles(s, n=20) if len(s) >= 2 else [s[0]] * 19
    quart = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
    return Profile(statistics.median(s), q[18], s[0], quart[2] - quart[0], len(s), s, machine)


def profile(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 20, min_time_s: float = 0.0) -> Profile:
    """Time ``fn()`` after ``warmup`` calls: ``repeats`` samples (more until ``min_time_s`` has passed)."""
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < repeats or time.perf_counter() - start < min_time_s:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return _summarise(samples, machine_facts())


def compare(fns: dict[str, Callable[[], Any]], *, warmup: int = 3, repeats: int = 20) -> dict[str, Profile]:
    """Time several callables interleaved (A B C A B C …) so that machine noise hits them alike."""
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        samples: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                samples[k].append((time.perf_counter() - t0) * 1e3)
    facts = machine_facts()
    return {k: _summarise(v, facts) for k, v in samples.items()}


def _vm(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_memory_mb(fn: Callable[[], Any]) -> float | None:
    """Extra resident memory (MB) that ``fn()`` needs at its peak, above what the process held before.

    On Linux the process's peak-RSS mark is reset (``/proc/self/clear_refs``) before the call and read
    after it; elsewhere returns None. Includes allocator caching, so it is an upper bound.
    """
    before = _vm("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
    except OSError:
        return None
    with torch.inference_mode():
        fn()
    peak = _vm("VmHWM")
    if before is None or peak is None:
        return None
    return max(0.0, (peak - before) / 1e6)


def file_size_mb(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> float:
    """Total size in MB (10^6 bytes) of the files an artifact needs."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return sum(Path(p).stat().st_size for p in items) / 1e6
