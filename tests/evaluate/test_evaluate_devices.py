"""Evaluation measures on tensors that live on another device than the CPU.

No GPU here: the ``meta`` device stands in for one, under :class:`GpuLikeMeta` (tests/_devices.py), which
answers ``.item()`` and refuses what CUDA refuses that plain meta lets through.
"""

from __future__ import annotations

import pytest
import torch

from _devices import GpuLikeMeta
from nnforge.evaluate.calibration import (
    brier_score,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
)


@pytest.mark.parametrize("measure", [expected_calibration_error, reliability_diagram])
def test_binned_calibration_measures_take_device_tensors(measure) -> None:
    probs = torch.softmax(torch.randn(20, 3, device="meta"), -1)
    labels = torch.zeros(20, dtype=torch.long, device="meta")
    with GpuLikeMeta():
        measure(probs, labels, n_bins=5)


@pytest.mark.parametrize("measure", [expected_calibration_error, reliability_diagram, brier_score,
                                     negative_log_likelihood])
def test_calibration_measures_take_device_probs_with_labels_given_as_a_list(measure) -> None:
    probs = torch.softmax(torch.randn(20, 3, device="meta"), -1)
    with GpuLikeMeta():
        measure(probs, [0, 1] * 10)


def test_fit_temperature_takes_device_logits_with_labels_given_as_a_list() -> None:
    with GpuLikeMeta():
        assert fit_temperature(torch.randn(20, 3, device="meta"), [0, 1] * 10) > 0
