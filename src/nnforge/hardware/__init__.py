"""Measuring what a model costs on this machine: latency, throughput, peak memory, size; machine facts;
the benchmark harness.

``profile(fn, repeats=…)`` times a callable with warm-up and repeats and returns medians and spread;
comparisons between variants should interleave them (``compare``) because shared machines are noisy, and
``time_verdict``/``speed_verdict`` say whether a difference is more than that noise.

The benchmark harness (what every script in ``benchmarks/`` stands on): ``interleave`` times variants and
peers round by round in shuffled order; ``ratio_with_ci`` gives a ratio of medians with its bootstrap 95%
interval; ``cold_copies`` sizes weight copies from the measured L3 so that "cold" means DRAM;
``write_results`` records provenance, machine and peers and checks the results schema before writing.

``measure_model(model, example_inputs)`` gives every hardware objective a search uses in one call (batch-1
latency, throughput, peak memory, size, energy); ``EnergyMeter`` measures the energy of any block of code:
RAPL counters where readable, otherwise an estimate labelled ``"estimate"``.
"""

from __future__ import annotations

from nnforge.hardware._bench import UNKNOWN_L3_BYTES, cold_copies, interleave, ratio_ci, ratio_with_ci, spread
from nnforge.hardware._energy import (
    DEFAULT_WATTS_PER_CORE,
    EnergyMeter,
    EnergyReading,
    energy_label,
    energy_method,
    energy_per_call,
    energy_source,
)
from nnforge.hardware._machine import l3_cache_bytes, machine_facts
from nnforge.hardware._measure import MEASURED_METRICS, measure_model, state_dict_size_mb
from nnforge.hardware._profile import (
    Profile,
    compare,
    file_size_mb,
    peak_memory_mb,
    profile,
    speed_verdict,
    time_verdict,
)
from nnforge.hardware._results import (
    MODES,
    package_versions,
    provenance,
    results_path,
    validate_results,
    write_results,
)

__all__ = ["Profile", "profile", "compare", "speed_verdict", "time_verdict", "machine_facts", "l3_cache_bytes",
           "peak_memory_mb", "file_size_mb", "interleave", "cold_copies", "UNKNOWN_L3_BYTES", "ratio_ci",
           "ratio_with_ci", "spread", "MODES", "provenance", "package_versions", "results_path", "validate_results",
           "write_results", "measure_model", "MEASURED_METRICS", "state_dict_size_mb", "EnergyMeter", "EnergyReading",
           "energy_source", "DEFAULT_WATTS_PER_CORE", "energy_per_call", "energy_label",
           "energy_method"]
