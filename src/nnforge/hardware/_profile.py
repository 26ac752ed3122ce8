"""Timing with warm-up, repeats, medians and spread; is one callable really faster; peak memory; size on disk."""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnforge.hardware._machine import machine_facts

__all__ = ["Profile", "profile", "compare", "speed_verdict", "time_verdict", "peak_memory_mb", "file_size_mb"]


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
    # "inclusive": the sample is the population measured; the default "exclusive" method extrapolates
    # beyond the largest sample for small n (p95 of [1, 2, 3, 10] was 15.25)
    q = statistics.quantiles(s, n=20, method="inclusive") if len(s) >= 2 else [s[0]] * 19
    quart = statistics.quantiles(s, n=4, method="inclusive") if len(s) >= 2 else [s[0]] * 3
    return Profile(statistics.median(s), q[18], s[0], quart[2] - quart[0], len(s), s, machine)


def _check_counts(warmup: int, repeats: int) -> None:
    if isinstance(repeats, bool) or isinstance(warmup, bool) or repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got repeats={repeats!r}, warmup={warmup!r}")


def profile(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 20, min_time_s: float = 0.0,
            inference_mode: bool = True) -> Profile:
    """Time ``fn()`` after ``warmup`` calls: ``repeats`` samples (more until ``min_time_s`` has passed).

    The calls run under ``torch.inference_mode()`` (no autograd bookkeeping, as deployed inference runs)
    unless ``inference_mode=False``: time a training step or anything that needs gradients with that.
    """
    _check_counts(warmup, repeats)
    with torch.inference_mode(inference_mode):
        for _ in range(warmup):
            fn()
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < repeats or time.perf_counter() - start < min_time_s:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return _summarise(samples, machine_facts())


def compare(fns: dict[str, Callable[[], Any]], *, warmup: int = 3, repeats: int = 20,
            inference_mode: bool = True) -> dict[str, Profile]:
    """Time several callables interleaved so that machine noise hits them alike.

    Rounds alternate the order (A B C, C B A, A B C, …) so that no callable always runs first (cold caches)
    or last. Runs under ``torch.inference_mode()`` unless ``inference_mode=False``, as :func:`profile`.
    """
    _check_counts(warmup, repeats)
    if not fns:
        raise ValueError("compare needs at least one callable")
    with torch.inference_mode(inference_mode):
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        samples: dict[str, list[float]] = {k: [] for k in fns}
        items = list(fns.items())
        for r in range(repeats):
            for k, fn in (items if r % 2 == 0 else items[::-1]):
                t0 = time.perf_counter()
                fn()
                samples[k].append((time.perf_counter() - t0) * 1e3)
    facts = machine_facts()
    return {k: _summarise(v, facts) for k, v in samples.items()}


def _mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """``(P(a < b) + P(a = b)/2, two-sided p)``: the Mann-Whitney U test, normal approximation with tie and
    continuity corrections (it cannot reach p < 0.05 with fewer than 4 samples each, as the exact test)."""
    n, m = len(a), len(b)
    pooled = sorted([(x, 0) for x in a] + [(y, 1) for y in b])
    ranks_a, ties, i = 0.0, 0.0, 0
    while i < len(pooled):
        j = i
        while j < len(pooled) and pooled[j][0] == pooled[i][0]:
            j += 1
        rank = (i + j + 1) / 2  # 1-based mean rank of the tied run
        ranks_a += rank * sum(1 for k in range(i, j) if pooled[k][1] == 0)
        ties += (j - i) ** 3 - (j - i)
        i = j
    u_a = ranks_a - n * (n + 1) / 2  # pairs (x, y) with x > y, ties half
    mean = n * m / 2
    var = n * m / 12 * ((n + m + 1) - ties / ((n + m) * (n + m - 1)))
    if var <= 0:
        return 0.5, 1.0
    z = max(0.0, abs(u_a - mean) - 0.5) / math.sqrt(var)
    return 1 - u_a / (n * m), math.erfc(z / math.sqrt(2))


def bootstrap_median_ratio(numerator: Sequence[float], denominator: Sequence[float], *, alpha: float = 0.05,
                           n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` interval of ``median(numerator) / median(denominator)``.

    Each of the ``n_boot`` resamples draws both samples independently with replacement (numerator first).
    """
    rng = random.Random(seed)
    boots = sorted(statistics.median(rng.choices(numerator, k=len(numerator)))
                   / statistics.median(rng.choices(denominator, k=len(denominator))) for _ in range(max(1, n_boot)))
    return boots[int(alpha / 2 * (len(boots) - 1))], boots[int(math.ceil((1 - alpha / 2) * (len(boots) - 1)))]


def speed_verdict(candidate: Profile | Sequence[float], baseline: Profile | Sequence[float], *,
                  alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Is ``candidate`` really faster than ``baseline``? Both timed interleaved (:func:`compare`), in ms.

    A bare comparison of medians calls two identical code paths "faster" half the time. Here:

    * ``speedup``: median(baseline) / median(candidate);
    * ``speedup_ci``: its ``1 - alpha`` bootstrap interval (percentile, ``n_boot`` resamples of each sample);
    * ``p_value``: two-sided Mann-Whitney U test that one's times are stochastically smaller than the other's;
    * ``verdict``: ``"faster"`` / ``"slower"`` when ``p_value < alpha``, else ``"not significant"``.

    At least 4 samples each are needed for any verdict but ``"not significant"``; 20-30 are typical.
    """
    a = list(candidate.samples_ms if isinstance(candidate, Profile) else candidate)
    b = list(baseline.samples_ms if isinstance(baseline, Profile) else baseline)
    if not a or not b:
        raise ValueError("speed_verdict needs at least one timing of each callable")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    speedup = statistics.median(b) / statistics.median(a)
    lo, hi = bootstrap_median_ratio(b, a, alpha=alpha, n_boot=n_boot, seed=seed)
    p_less, p = _mann_whitney_p(a, b)
    verdict = "not significant" if p >= alpha else "faster" if p_less > 0.5 else "slower"
    return {"speedup": speedup, "speedup_ci": (lo, hi), "p_value": p, "verdict": verdict}


def time_verdict(candidate: Callable[[], Any], baseline: Callable[[], Any], *, warmup: int = 3, repeats: int = 30,
                 alpha: float = 0.05) -> dict[str, Any]:
    """Time both interleaved (:func:`compare`) and judge them (:func:`speed_verdict`).

    Returns ``{"candidate_ms", "baseline_ms"}`` (medians) and :func:`speed_verdict`'s fields.
    """
    t = compare({"candidate": candidate, "baseline": baseline}, warmup=warmup, repeats=repeats)
    return {"candidate_ms": t["candidate"].median_ms, "baseline_ms": t["baseline"].median_ms,
            **speed_verdict(t["candidate"], t["baseline"], alpha=alpha)}


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
