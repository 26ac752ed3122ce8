"""Measuring what a model costs on this machine: latency, throughput, peak memory, size; machine facts.

``profile(fn, repeats=…)`` times a callable with warm-up and repeats and returns medians and spread;
comparisons between variants should interleave them (``compare``) because shared machines are noisy, and
``time_verdict``/``speed_verdict`` say whether a difference is more than that noise.
"""

from __future__ import annotations

from nnforge.hardware._machine import machine_facts
from nnforge.hardware._profile import (
    Profile,
    compare,
    file_size_mb,
    peak_memory_mb,
    profile,
    speed_verdict,
    time_verdict,
)

__all__ = ["Profile", "profile", "compare", "speed_verdict", "time_verdict", "machine_facts", "peak_memory_mb",
           "file_size_mb"]
