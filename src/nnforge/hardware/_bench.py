"""The benchmark harness's timing side: interleaved rounds, cold copies sized from the measured L3, ratio intervals.

A speed-up measured on a shared machine is only worth its interval: :func:`interleave` times every
variant in each round, in a fresh random order, so that noise hits them alike; :func:`ratio_with_ci`
turns two sample lists into a ratio of medians with its bootstrap 95% interval. "Cold" timings rotate
through enough copies of the weights that they stream from DRAM: :func:`cold_copies` sizes that from the
machine's L3, never from an assumed cache size.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from nnforge.errors import ConfigError
from nnforge.hardware._machine import UNKNOWN_L3_BYTES, l3_cache_bytes
from nnforge.hardware._profile import bootstrap_median_ratio

__all__ = ["UNKNOWN_L3_BYTES", "cold_copies", "interleave", "ratio_ci", "ratio_with_ci", "spread"]

log = logging.getLogger(__name__)


def cold_copies(nbytes: int, l3_bytes: int | None = None) -> int:
    """How many copies of an ``nbytes`` operand to rotate through so that each call reads it from DRAM.

    Rotating through the copies streams more than twice the L3 between two uses of the same copy.
    ``l3_bytes`` defaults to the size read from this machine (:func:`~nnforge.hardware.machine_facts`'s
    ``l3_cache_mb``); where it cannot be read, :data:`UNKNOWN_L3_BYTES` (512 MiB) is assumed and logged.
    """
    if isinstance(nbytes, bool) or nbytes <= 0:
        raise ConfigError(f"cold_copies needs the operand's size in bytes (> 0); got nbytes={nbytes!r}")
    if l3_bytes is None:
        l3_bytes = l3_cache_bytes()[0]
        if l3_bytes is None:
            log.warning("the L3 cache size could not be read; sizing cold copies for %d MiB", UNKNOWN_L3_BYTES >> 20)
            l3_bytes = UNKNOWN_L3_BYTES
    if l3_bytes <= 0:
        raise ConfigError(f"l3_bytes must be > 0; got {l3_bytes!r}")
    return 2 * l3_bytes // nbytes + 1  # the smallest count with count * nbytes > 2 * l3_bytes


def _time_ms(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def interleave(fns: dict[str, Callable[[], object]], *, rounds: int, calls_per_round: int = 1, warmup: int = 1,
               seed: int = 0, round_budget_s: float | None = None,
               inference_mode: bool = True) -> dict[str, list[float]]:
    """Time every callable once per round, each round in a fresh shuffled order; ms samples per name.

    Args:
        fns: name -> callable (a variant or a peer). All see the same machine noise, round by round.
        rounds: how many samples of each to take (at most, see ``round_budget_s``).
        calls_per_round: consecutive calls timed together per sample; the sample is their mean (use it
            for calls too short for the clock).
        warmup: untimed calls of each callable first (also shuffled).
        seed: seeds the round orders.
        round_budget_s: stop after the round in which the timed rounds' total passes this many seconds
            (at least 3 rounds run, or ``rounds`` if fewer); None runs every round.
        inference_mode: run under ``torch.inference_mode()`` (as deployed inference); False to time
            anything that needs gradients.
    """
    if not fns:
        raise ConfigError("interleave needs at least one callable")
    for label, value, low in (("rounds", rounds, 1), ("calls_per_round", calls_per_round, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"interleave's {label} must be an int >= {low}; got {value!r}")
    rng = random.Random(seed)
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in names}
    with torch.inference_mode(inference_mode):
        for _ in range(warmup):
            for k in rng.sample(names, len(names)):
                fns[k]()
        start = time.perf_counter()
        for r in range(rounds):
            for k in rng.sample(names, len(names)):
                samples[k].append(_time_ms(fns[k], calls_per_round))
            if (round_budget_s is not None and r + 1 >= min(3, rounds)
                    and time.perf_counter() - start > round_budget_s):
                break
    return samples


def ratio_ci(numerator_ms: Sequence[float], denominator_ms: Sequence[float], *, alpha: float = 0.05,
             n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap ``1 - alpha`` interval of ``median(numerator_ms) / median(denominator_ms)``.

    A speed-up of ours over a baseline is ``ratio_ci(baseline_ms, ours_ms)``. The samples are resampled
    independently (the percentile bootstrap :func:`~nnforge.hardware.speed_verdict` uses).
    """
    num, den = _samples("numerator_ms", numerator_ms), _samples("denominator_ms", denominator_ms)
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1); got {alpha!r}")
    return bootstrap_median_ratio(num, den, alpha=alpha, n_boot=n_boot, seed=seed)


def ratio_with_ci(numerator_ms: Sequence[float], denominator_ms: Sequence[float], *, alpha: float = 0.05,
                  n_boot: int = 2000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """``(median(numerator_ms) / median(denominator_ms), (lo, hi))`` with :func:`ratio_ci`'s interval.

    The interval always contains the ratio: on small, skewed samples the percentile bootstrap can miss its
    own point estimate, and then the interval is widened to it (never narrowed).
    """
    lo, hi = ratio_ci(numerator_ms, denominator_ms, alpha=alpha, n_boot=n_boot, seed=seed)
    ratio = statistics.median(numerator_ms) / statistics.median(denominator_ms)
    return ratio, (min(lo, ratio), max(hi, ratio))


def spread(samples: Sequence[float]) -> dict[str, float]:
    """Median, min, max, interquartile range and count of repeated measurements (of anything)."""
    s = sorted(float(v) for v in samples)
    if not s:
        raise ConfigError("spread needs at least one measurement")
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) >= 2 else [s[0]] * 3
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "iqr": q[2] - q[0], "n": len(s)}


def _samples(label: str, values: Sequence[float]) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ConfigError(f"{label} is empty: a ratio needs at least one timing on each side")
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise ConfigError(f"{label} must hold positive, finite times in ms; got {out[:5]}…")
    return out
