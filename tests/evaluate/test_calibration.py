"""Calibration measures and temperature scaling, on seeded synthetic logits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nnforge.errors import DataError, ModelError
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


def calibrated_sample(n: int, c: int, seed: int, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits, and labels drawn from softmax(logits): calibrated by construction."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
    return logits, labels


# --------------------------------------------------------------------------------------------------
# ECE, Brier, NLL


def test_ece_near_zero_for_calibrated_data():
    logits, labels = calibrated_sample(200_000, 4, seed=0)
    ece = expected_calibration_error(torch.softmax(logits, -1), labels)
    assert ece < 0.01  # the sampling noise of 15 bins at N = 200k is a few thousandths


def test_ece_large_for_overconfident_logits():
    logits, labels = calibrated_sample(20_000, 4, seed=1)
    calibrated = expected_calibration_error(torch.softmax(logits, -1), labels)
    overconfident = expected_calibration_error(torch.softmax(logits * 4, -1), labels)
    assert overconfident > 0.15 and overconfident > 10 * calibrated


def test_ece_matches_a_hand_computed_case():
    # conf 0.9 (right), 0.9 (wrong), 0.6 (right): bins (13/15, 14/15] and (8/15, 9/15]
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    expected = (2 / 3) * abs(0.5 - 0.9) + (1 / 3) * abs(1.0 - 0.6)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-9)
    # a single bin reduces to |accuracy - mean confidence|
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(abs(2 / 3 - 0.8), abs=1e-9)


def test_brier_and_nll_values():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]])
    labels = torch.tensor([0, 1])
    assert brier_score(probs, labels) == pytest.approx((0 + (0.25 + 0.5625 + 0.0625)) / 2)
    assert brier_score(torch.tensor([[0.0, 1.0]]), torch.tensor([0])) == pytest.approx(2.0)
    assert negative_log_likelihood(probs, labels) == pytest.approx(-math.log(0.25) / 2)


def test_accepts_numpy_and_lists():
    probs = np.array([[0.7, 0.3], [0.2, 0.8]])
    assert expected_calibration_error(probs, [0, 1]) == pytest.approx(
        expected_calibration_error(torch.from_numpy(probs), torch.tensor([0, 1])))


# --------------------------------------------------------------------------------------------------
# reliability diagram


def test_reliability_bins_sum_to_n_and_match_ece():
    logits, labels = calibrated_sample(5_000, 3, seed=2)
    probs = torch.softmax(logits * 2, -1)
    d = reliability_diagram(probs, labels, n_bins=15)
    assert d.n_bins == 15 and len(d.bin_edges) == 16 and sum(d.counts) == 5_000 == d.n
    assert d.ece == pytest.approx(expected_calibration_error(probs, labels, 15))
    for count, conf, acc, lo, hi in zip(d.counts, d.confidence, d.accuracy, d.bin_edges, d.bin_edges[1:],
                                        strict=False):
        if count == 0:
            assert conf is None and acc is None
        else:
            assert lo - 1e-12 <= conf <= hi + 1e-12 and 0 <= acc <= 1
    # max-probability of 3 classes is >= 1/3: the first four bins (up to 4/15) are empty
    assert d.counts[:4] == [0, 0, 0, 0]
    doc = json.loads(json.dumps(d.to_dict()))
    assert ReliabilityDiagram.from_dict(doc) == d


def test_plot_reliability_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    logits, labels = calibrated_sample(500, 3, seed=3)
    diagrams = {"raw": reliability_diagram(torch.softmax(logits * 3, -1), labels),
                "scaled": reliability_diagram(torch.softmax(logits, -1), labels)}
    out = plot_reliability(diagrams, tmp_path / "sub" / "rel.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["rel.png"]  # no temporary file left behind
    with pytest.raises(DataError, match="at least one diagram"):
        plot_reliability({}, tmp_path / "empty.png")


# --------------------------------------------------------------------------------------------------
# temperature scaling


@pytest.mark.parametrize("true_t", [0.5, 3.0])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    logits, labels = calibrated_sample(20_000, 5, seed=4)
    fitted = fit_temperature(logits * true_t, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)


def test_temperature_scaling_lowers_ece_and_keeps_accuracy():
    val_logits, val_labels = calibrated_sample(5_000, 4, seed=5)
    test_logits, test_labels = calibrated_sample(5_000, 4, seed=6)
    ts = TemperatureScaling().fit(val_logits * 3, val_labels)
    before = torch.softmax(test_logits * 3, -1)
    after = ts.probs(test_logits * 3)
    assert torch.equal(before.argmax(-1), after.argmax(-1))
    assert expected_calibration_error(after, test_labels) < 0.3 * expected_calibration_error(before, test_labels)
    assert negative_log_likelihood(after, test_labels) < negative_log_likelihood(before, test_labels)
    assert brier_score(after, test_labels) < brier_score(before, test_labels)
    assert torch.allclose(ts.transform(test_logits * 3), test_logits * 3 / ts.temperature)


def test_fit_temperature_is_deterministic_and_float32_agrees():
    logits, labels = calibrated_sample(2_000, 3, seed=7)
    a, b = fit_temperature(logits * 2, labels), fit_temperature(logits * 2, labels)
    assert a == b
    assert fit_temperature((logits * 2).float(), labels) == pytest.approx(a, rel=1e-4)


def test_temperature_round_trip_and_unfitted():
    ts = TemperatureScaling(2.5)
    doc = json.loads(json.dumps(ts.to_dict()))
    assert TemperatureScaling.from_dict(doc).temperature == 2.5
    with pytest.raises(ModelError, match="not fitted"):
        TemperatureScaling().probs(torch.zeros(2, 3))
    with pytest.raises(DataError, match="expected type"):
        TemperatureScaling.from_dict({"type": "vector_scaling", "version": 1, "data": {}})
    with pytest.raises(DataError, match="finite number > 0"):
        TemperatureScaling.from_dict({"type": "temperature_scaling", "version": 1, "data": {"temperature": -1}})
    with pytest.raises(DataError, match="finite number > 0"):
        TemperatureScaling(0.0)


# --------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(("probs", "labels", "match"), [
    (torch.empty(0, 3), torch.empty(0, dtype=torch.long), "empty"),
    (torch.tensor([0.5, 0.5]), torch.tensor([0]), r"shape \(N, C\)"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0, 1]), "1 rows of scores but 2 labels"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([2]), r"labels must be in \[0, 2\)"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([-1]), r"labels must be in \[0, 2\)"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0.5]), "integer class indices"),
    (torch.tensor([[float("nan"), 0.5]]), torch.tensor([0]), "NaN or infinite"),
    (torch.tensor([[2.0, -1.0]]), torch.tensor([0]), r"must lie in \[0, 1\]"),
    (torch.tensor([[0.5, 0.2]]), torch.tensor([0]), "must sum to 1"),
    (torch.tensor([[1.0]]), torch.tensor([0]), "at least 2 classes"),
])
def test_bad_input_raises_data_error(probs, labels, match):
    for fn in (expected_calibration_error, brier_score, reliability_diagram):
        with pytest.raises(DataError, match=match):
            fn(probs, labels)


def test_bad_logits_and_bins():
    with pytest.raises(DataError, match="NaN or infinite"):
        fit_temperature(torch.tensor([[0.0, float("inf")]]), torch.tensor([0]))
    with pytest.raises(DataError, match="labels must be in"):
        fit_temperature(torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(DataError, match="empty"):
        TemperatureScaling().fit(torch.empty(0, 2), torch.empty(0, dtype=torch.long))
    with pytest.raises(DataError, match="n_bins"):
        expected_calibration_error(torch.tensor([[0.5, 0.5]]), torch.tensor([0]), n_bins=0)
