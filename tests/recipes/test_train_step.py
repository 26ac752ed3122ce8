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
