"""The quickstart's claim (fine-tuned beats the frozen-embedding probe) is a paired test, not two point estimates."""

from __future__ import annotations

import numpy as np
import pytest

from nnforge.errors import StepFailedError
from nnforge.evaluate import Outputs
from nnforge.recipes.steps.evaluate import finetune_gain


def _outputs(labels: np.ndarray, preds: np.ndarray, classes: int = 3) -> Outputs:
    return Outputs(labels, np.eye(classes)[preds])


def _pair(n: int, both_right: int, only_tuned: int, only_probe: int) -> tuple[Outputs, list[int]]:
    """Labels all 0; the fine-tuned model and the probe right on the given (disjoint) item counts."""
    labels = np.zeros(n, dtype=np.int64)
    tuned, probe = np.ones(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    tuned[: both_right + only_tuned] = 0
    probe[:both_right] = 0
    probe[both_right + only_tuned : both_right + only_tuned + only_probe] = 0
    return _outputs(labels, tuned), probe.tolist()


def test_a_small_gain_on_the_same_items_is_significant_only_because_the_test_is_paired():
    # 300 of 600 right by both, 12 more by the fine-tuned model only: +2 points. Two independent 50 % accuracies
    # on 600 items have a standard error of the difference near 2.9 points (not significant); paired, every
    # discordant item favours the fine-tuned model, so the interval excludes 0 and McNemar's p = 2 / 2**12
    tuned, probe = _pair(600, 300, 12, 0)
    gain = finetune_gain(tuned, probe)
    assert gain["estimate"] == pytest.approx(12 / 600)
    assert gain["low"] > 0 and gain["high"] < 0.04
    assert gain["mcnemar"] == {"b": 12, "c": 0, "p_value": pytest.approx(2 / 2**12)}
    assert gain["significant"] is True and gain["n"] == 600
    assert gain["verdict"].startswith("Fine-tuning made a significant difference at 95%")
    assert "better" in gain["verdict"]


def test_equal_accuracy_with_many_disagreements_is_not_significant():
    tuned, probe = _pair(600, 200, 40, 41)
    gain = finetune_gain(tuned, probe)
    assert gain["estimate"] == pytest.approx(-1 / 600)
    assert gain["low"] < 0 < gain["high"]
    assert gain["mcnemar"]["p_value"] == pytest.approx(1.0)
    assert gain["significant"] is False
    assert gain["verdict"].startswith("Fine-tuning made no significant difference at 95%")
    assert "contains 0" in gain["verdict"]


def test_a_significant_loss_is_called_worse():
    tuned, probe = _pair(600, 300, 0, 30)
    gain = finetune_gain(tuned, probe)
    assert gain["high"] < 0 and gain["significant"] is True and "worse" in gain["verdict"]


def test_predictions_of_another_split_are_refused():
    tuned, probe = _pair(600, 300, 12, 0)
    with pytest.raises(StepFailedError, match="same test split"):
        finetune_gain(tuned, probe[:-1])
