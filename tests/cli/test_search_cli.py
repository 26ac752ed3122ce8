"""``nnforge search RECIPE``: --workers/--storage/--trials set the recipe's search step; two worker processes share
the study; a study on the same storage resumes (only the missing trials run); bad input exits 2 and writes
nothing."""

from __future__ import annotations

import json

import pytest

from nnforge.cli import main

RECIPE = """
name: digits-cli-search
seed: 0
model: {architecture: digits-mlp, options: {hidden: [16]}}
data: {dataset: digits}
steps:
  - search:
      space:
        steps[0].optimizer_options.lr: {kind: float, low: 0.001, high: 0.03, log: true}
      objectives: [{metric: val_loss}, {metric: latency_b1_ms}]
      sampler: nsga2
      trials: 5
      latency_repeats: 2
      trial_steps:
        - train: {batch_size: 64, train: {max_steps: 4, eval_every: 4}}
"""


def _trial_events():
    from nnforge.ledger import Ledger

    with Ledger.open(".nnforge/ledger.db") as led:
        return [e for e in led.events() if e.kind == "search.trial"]


@pytest.mark.slow  # two spawned worker processes each import torch
def test_two_workers_share_one_study_and_a_second_search_resumes_it(workdir, capsys):
    (workdir / "r.yaml").write_text(RECIPE, encoding="utf-8")
    assert main(["search", "r.yaml", "--workers", "2", "--trials", "3", "--storage", "study.journal", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["metrics"]["search_trials"] == 3 and first["metrics"]["search_complete"] == 3
    assert (workdir / "study.journal").is_file() and not (workdir / first["run_dir"] / "search.journal").exists()
    events = _trial_events()
    assert sorted(e.data["number"] for e in events) == [0, 1, 2]  # each trial once, from either worker
    assert all(e.run == first["run_id"] and e.data["state"] == "complete" for e in events)
    # the same storage and study name: the study resumes, and only the two missing trials run
    assert main(["search", "r.yaml", "--trials", "5", "--storage", "study.journal", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["metrics"]["search_trials"] == 5
    mine = [e.data["number"] for e in _trial_events() if e.run == second["run_id"]]
    assert sorted(mine) == [3, 4]
    assert len(list((workdir / second["run_dir"] / "trials").iterdir())) == 2
    # the run's model is the best trial's, found in whichever run's folder that trial ran
    from safetensors.torch import load_file

    from nnforge.ledger import Ledger

    with Ledger.open(".nnforge/ledger.db") as led:
        (finished,) = led.events(run=second["run_id"], kind="search.finished")
    trial_run = finished.data["best"][0]["trial_run"]
    owner = first if trial_run.startswith(first["run_id"]) else second
    mine = load_file(workdir / second["run_dir"] / "model.safetensors")
    theirs = load_file(workdir / owner["run_dir"] / "trials" / trial_run / "model.safetensors")
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)


@pytest.mark.parametrize(("args", "message"), [
    (["--storage", "no/such/folder/study.journal"], "does not exist"),
    (["--storage", "mysql://db/x"], "not supported"),
    (["--trials", "0"], "Invalid value for '--trials'"),
    (["--set", "steps[0].trials=-1"], "trials"),
])
def test_bad_search_input_exits_2_and_writes_nothing(workdir, capsys, args, message):
    (workdir / "r.yaml").write_text(RECIPE, encoding="utf-8")
    assert main(["search", "r.yaml", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err + captured.out
    assert not (workdir / "runs").exists() and not (workdir / ".nnforge").exists()


def test_a_recipe_without_a_search_step_is_refused(workdir, capsys):
    (workdir / "r.yaml").write_text(RECIPE.split("  - search:")[0] + "  - train: {train: {max_steps: 2}}\n")
    assert main(["search", "r.yaml"]) == 2
    assert "has no search step" in capsys.readouterr().err
    assert not (workdir / "runs").exists()
