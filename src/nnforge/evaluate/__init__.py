"""Evaluation: metrics (a registry), slices, regression suites with statistical tests, robustness probes,
calibration, and the cost of models side by side. OOD detectors live in :mod:`nnforge.explain`."""

from __future__ import annotations

from nnforge.evaluate.calibration import (
    ReliabilityDiagram,
    TemperatureScaling,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    plot_reliability,
    reliability_diagram,
)
from nnforge.evaluate.flips import flip_analysis
from nnforge.evaluate.metrics import METRICS, Metric, accuracy, auroc, cosine_fidelity, macro_f1, majority_accuracy
from nnforge.evaluate.outputs import Outputs, tensor_outputs, text_outputs
from nnforge.evaluate.slices import Slice, build_slices, slice_table
from nnforge.evaluate.stats import Interval, bootstrap_interval, mcnemar, paired_bootstrap_diff_ci
from nnforge.evaluate.suite import (
    CheckResult,
    Suite,
    SuiteInputs,
    SuiteResult,
    builtin_suites,
    load_suite,
    run_suite,
    write_junit,
)
from nnforge.evaluate.text import cost, cost_side_by_side, latency_b1_ms

__all__ = ["METRICS", "Metric", "accuracy", "macro_f1", "majority_accuracy", "cosine_fidelity", "auroc", "brier_score",
           "negative_log_likelihood", "expected_calibration_error", "reliability_diagram", "ReliabilityDiagram",
           "plot_reliability", "fit_temperature", "TemperatureScaling", "flip_analysis", "Outputs", "text_outputs", "tensor_outputs", "Slice", "build_slices", "slice_table", "Interval",
           "bootstrap_interval", "mcnemar", "paired_bootstrap_diff_ci", "Suite", "SuiteInputs", "SuiteResult", "CheckResult", "load_suite",
           "run_suite", "builtin_suites", "write_junit", "cost", "cost_side_by_side", "latency_b1_ms"]
