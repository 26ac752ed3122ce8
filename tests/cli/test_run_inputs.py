"""Small input mistakes named clearly: numbers beyond what a run can use, a value given to a flag (`--json true`),
and a copied run folder that would write into its original workspace's ledger."""

from __future__ import annotations

import logging
import shutil

import pytest

from nnforge import runs
from nnforge.cli import main
from nnforge.cli._common import run_ledger
from nnforge.errors import ConfigError
from nnforge.ledger import Ledger
from nnforge.recipes import load_recipe


@pytest.mark.parametrize("setting, message", [
    ("steps[0].train.max_steps=1000000000000000000000000000000",
     "The 'steps[0].train.max_steps' parameter must be at most 100000000. Got 1e+30 instead."),
    ("steps[0].batch_size=100000000", "The 'steps[0].batch_size' parameter must be at most 1048576"),
    ("seed=100000000000000000000", "The 'seed' parameter must be at most 9223372036854775807"),
    ("steps[0].optimizer_options.lr=1.0e+30", "'steps[0].optimizer_options.lr' parameter must be a number in the "
                                              "range [-1000000000000, 1000000000000]"),
])
def test_numbers_beyond_what_a_run_can_use_are_refused(setting, message):
    with pytest.raises(ConfigError) as err:
        load_recipe("digits", [setting])
    assert message in str(err.value)


def test_numbers_within_bounds_pass():
    assert load_recipe("digits", ["steps[0].train.max_steps=100000000"]).steps[0].config.train.max_steps == 10**8


@pytest.mark.parametrize("argv, message", [
    (["run", "--json", "true"], "'true' is not a recipe: --json and the other flags take no value"),
    (["run", "--json", "false", "digits"], "'false' is not a recipe"),
    (["train", "digits", "charlm"], "give one recipe; got 2"),
])
def test_a_flag_value_is_not_read_as_the_recipe(workdir, capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (workdir / "runs").exists()


def test_a_copied_run_folder_warns_that_it_writes_to_the_original_ledger(tmp_path, monkeypatch, caplog):
    original = tmp_path / "team" / "runs" / "r1"
    original.mkdir(parents=True)
    ledger = tmp_path / "team" / ".nnforge" / "ledger.db"
    led = Ledger.open(ledger)
    led.append("run.started", {}, run="r1")
    led.close()
    runs.write_config(original, {"run_id": "r1", "status": "finished", "ledger": str(ledger),
                                 **runs.process_facts(original)})
    copy = tmp_path / "mine" / "r1"
    shutil.copytree(original, copy)
    monkeypatch.chdir(tmp_path / "mine")
    with caplog.at_level(logging.WARNING, logger="nnforge.cli"):
        assert run_ledger(None, copy) == str(ledger)
    assert f"run folder {copy} is a copy of {original}" in caplog.text and str(ledger) in caplog.text
    caplog.clear()
    monkeypatch.chdir(tmp_path / "team")
    with caplog.at_level(logging.WARNING, logger="nnforge.cli"):
        run_ledger(None, original)
    assert caplog.text == ""  # the original folder: nothing to warn about
