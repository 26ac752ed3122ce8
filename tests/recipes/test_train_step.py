"""The ``train`` step and ``nnforge train``: optimizer and schedule by name, options validated up front."""

from __future__ import annotations

import json

import pytest

from nnforge.cli import main
from nnforge.errors import ConfigError
from nnforge.recipes import load_recipe


def test_digits_recipe_trains_and_reloads(workdir, capsys):
    assert main(["train", "digits", "--set", "steps[0].train.max_steps=150", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["train_steps"] == 150
    assert out["metrics"]["val_accuracy"] > 0.9
    import nnforge

    run = nnforge.load_run(out["run_dir"])
    assert type(run.model()).__name__ == "DigitsCNN"


def test_unknown_optimizer_and_option_are_recipe_errors():
    with pytest.raises(ConfigError, match="steps\\[0\\].*did you mean 'soap'"):
        load_recipe("charlm", ["steps[0].optimizer=saop"])
    with pytest.raises(ConfigError, match="unknown option 'momentum' for optimizer 'adamw'"):
        load_recipe("charlm", ["steps[0].optimizer_options={momentum: 0.9}"])
    with pytest.raises(ConfigError, match=r"steps\[0\].*optimizer_options\.lr.*greater than 0"):
        load_recipe("charlm", ["steps[0].optimizer_options={lr: -1}"])


def test_train_command_refuses_recipes_without_a_train_step(workdir, capsys):
    assert main(["train", "quickstart"]) == 2
    assert "no train step" in capsys.readouterr().err


def test_a_suite_gates_a_digits_run(workdir, capsys):
    """Suites on array data: the test split rebuilt from the run's recipe, per-class slices, budgets, and the
    text-only probes refused up front."""
    assert main(["train", "digits", "--set", "steps[0].train.max_steps=150", "--json"]) == 0
    run_dir = json.loads(capsys.readouterr().out)["run_dir"]
    (workdir / "gate.yaml").write_text("name: digits-gate\nsplit: test\nslices: [class]\nchecks:\n"
                                       "  - accuracy >= 0.9\n  - slice:class:3 accuracy >= 0.5\n"
                                       "  - size_mb <= 1\n  - ece <= 0.2\n  - latency_ms <= 1000\n")
    assert main(["evaluate", run_dir, "--suite", "gate.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and [c["verdict"] for c in out["checks"]] == ["pass"] * 5
    assert out["checks"][0]["value"] > 0.9 and out["checks"][1]["n"] == 37  # digit 3 in the stratified 20% split
    (workdir / "strict.yaml").write_text("name: strict\nslices: [class]\nchecks:\n  - accuracy >= 0.999\n")
    assert main(["evaluate", run_dir, "--suite", "strict.yaml"]) == 1
    (workdir / "typos.yaml").write_text("name: typos\nslices: [class]\nchecks:\n  - accuracy:char_swap >= 0.9\n")
    assert main(["evaluate", run_dir, "--suite", "typos.yaml"]) == 2
    assert "text perturbations (char_swap) on non-text data" in capsys.readouterr().err
    (workdir / "val.yaml").write_text("name: val\nsplit: holdout\nslices: [class]\nchecks:\n  - accuracy >= 0.5\n")
    assert main(["evaluate", run_dir, "--suite", "val.yaml"]) == 2
    assert "split 'holdout'" in capsys.readouterr().err


GATED = """
name: digits-gated
seed: 0
model: {architecture: digits-cnn}
data: {dataset: digits}
steps:
  - train: {batch_size: 64, train: {max_steps: 120}}
  - gate: {suite: SUITE}
"""


def test_gate_step_on_array_data_passes_stops_and_compares_with_a_baseline(workdir, capsys):
    (workdir / "ok.yaml").write_text("name: ok\nslices: [class]\nchecks:\n  - accuracy >= 0.8\n  - size_mb <= 1\n")
    (workdir / "strict.yaml").write_text("name: strict\nslices: [class]\nchecks:\n  - accuracy >= 0.999\n")
    (workdir / "vs.yaml").write_text("name: vs\nslices: [class]\nchecks:\n  - accuracy >= baseline - 0.05\n")
    for name in ("ok", "strict", "vs"):
        (workdir / f"{name}-recipe.yaml").write_text(GATED.replace("SUITE", f"{name}.yaml"))
    assert main(["run", "ok-recipe.yaml", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["metrics"]["gate_ok_passed"] == 1 and first["metrics"]["gate_ok_failed_checks"] == 0
    assert main(["run", "strict-recipe.yaml"]) == 1  # the pipeline stops at the failed suite
    assert "suite 'strict' failed" in capsys.readouterr().err
    assert main(["run", "vs-recipe.yaml", "--set", f"steps[1].baseline={first['run_dir']}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["gate_vs_passed"] == 1  # same seed, same model
    assert main(["run", "vs-recipe.yaml", "--set", "steps[1].baseline_variant=int8",
                 "--set", f"steps[1].baseline={first['run_dir']}"]) == 2
    assert "the baseline run has no variant 'int8'" in capsys.readouterr().err
