"""The quickstart suite's bars (fine-tuned ≥ its logreg baseline, per-genre ≥ chance − 0.03) and what the small
quickstart run records about fine-tuning against its linear-probe start."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnforge.cli import main
from nnforge.errors import ConfigError
from nnforge.evaluate import Outputs, SuiteInputs, load_suite, run_suite
from nnforge.evaluate.suite import parse_check


def test_the_shipped_suite_states_its_bars():
    suite = load_suite("quickstart")
    checks = {c.name: c for c in suite.parsed_checks()}
    logreg = checks["no worse than its logistic-regression baseline"]
    assert (logreg.metric, logreg.against, logreg.threshold, logreg.decide) == ("accuracy", "logreg", 0.0,
                                                                                 "significant")
    per_genre = [c for c in checks.values() if c.slice.startswith("class:")]
    assert len(per_genre) == 3 and all(c.threshold == pytest.approx(1 / 3 - 0.03, abs=5e-4) for c in per_genre)
    assert suite.needs()["logreg"]


def _outs(correct: np.ndarray) -> Outputs:
    labels = np.arange(len(correct)) % 3
    preds = np.where(correct, labels, (labels + 1) % 3)
    return Outputs(labels, np.eye(3)[preds])


def test_a_model_significantly_worse_than_logreg_fails_and_noise_passes():
    suite = load_suite("quickstart").model_copy(update={"checks": ["accuracy >= logreg"], "slices": ["class"],
                                                       "resamples": 300})
    rng = np.random.default_rng(0)
    base = rng.random(600) < 0.6
    worse = run_suite(suite, SuiteInputs(_outs(base & (rng.random(600) < 0.7)), logreg=_outs(base)))
    assert not worse.passed and "McNemar" in worse.checks[0].message
    same = run_suite(suite, SuiteInputs(_outs(base ^ (rng.random(600) < 0.02)), logreg=_outs(base)))
    assert same.passed


def test_logreg_compares_prediction_metrics_only():
    with pytest.raises(ConfigError, match="accuracy or macro_f1"):
        parse_check("ece <= logreg")
    with pytest.raises(ConfigError, match="accuracy or macro_f1"):
        parse_check("accuracy:char_swap >= logreg")


def test_the_small_run_records_finetuning_against_its_probe_start(small_run):
    _, run_dir = small_run
    m = json.loads((run_dir / "metrics.json").read_text())
    low, high = m["finetune_probe_gain_ci"]
    assert low <= m["finetune_probe_gain"] <= high
    assert m["finetune_beats_probe"] == (low > 0)
    sections = json.loads((run_dir / "sections.json").read_text())
    # the shipped recipe: LP-FT from the class-balanced probe
    assert sections["finetune_vs_probe"]["baseline"] == "baseline_logreg_balanced"
    assert sections["finetune_vs_probe"]["beats"] == m["finetune_beats_probe"]
    cm = np.asarray(sections["confusion"]["fp32"]["matrix"])
    assert cm.shape == (3, 3) and np.trace(cm) / cm.sum() == pytest.approx(m["fp32_acc"])
    assert set(m["int8_per_class_acc"]) == {"comedy", "tragedy", "history"}


def test_evaluate_cli_judges_the_small_run_against_its_logreg(small_run_copy, capsys):
    _, run_dir = small_run_copy
    rc = main(["evaluate", str(run_dir), "--suite", "quickstart", "--json"])
    result = json.loads(capsys.readouterr().out)
    check = next(c for c in result["checks"] if c["name"] == "no worse than its logistic-regression baseline")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert check["other_value"] == pytest.approx(metrics["baseline_logreg_acc"])
    assert rc == (0 if result["passed"] else 1)
