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
from nnforge.evaluate.outputs import tensor_outputs, text_outputs


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


def test_tensor_outputs_of_a_model_on_another_device() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).to("meta")
    with GpuLikeMeta():
        out = tensor_outputs(model, torch.randn(6, 4, device="meta"), torch.tensor([0, 1, 2, 0, 1, 2], device="meta"),
                             batch_size=4)
    assert out.probs.shape == (6, 3)


class _DeviceTextModel:
    """A text classifier whose results live on the meta device, as a GPU model's do."""

    num_classes = 3

    def eval(self) -> None:
        pass

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        return torch.softmax(torch.randn(len(texts), 3, device="meta"), -1)

    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        return torch.randn(len(texts), 5, device="meta")


def test_text_outputs_of_a_model_on_another_device() -> None:
    with GpuLikeMeta():
        out = text_outputs(_DeviceTextModel(), ["a", "b"], [0, 2], features=True)
    assert out.probs.shape == (2, 3) and out.features is not None and out.features.shape == (2, 5)
