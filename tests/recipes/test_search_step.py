"""Recipe step ``search``: each trial runs the trial steps as a run of its own with the sampled values set at their
paths, measured on its final model; every trial in the ledger; constraints mark trials infeasible; the best trials
written as recipes that ``nnforge run`` accepts unchanged and that reproduce the trial; the best trial's model
becomes the run's; the pruner stops trials through the train step; bad input is refused before anything is
written."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import yaml

from nnforge.cli import main

RECIPE = """
name: digits-search
seed: 0
model: {architecture: digits-mlp, options: {hidden: [32, 16]}}
data: {dataset: digits}
steps:
  - search:
      space:
        model.options.hidden[0]: {kind: categorical, choices: [8, 48]}
        steps[0].optimizer_options.lr: {kind: float, low: 0.001, high: 0.03, log: true}
      objectives: [{metric: val_accuracy, direction: maximize}]
      constraints: ["parameters <= 2000"]
      sampler: random
      seed: 3
      trials: 4
      latency_repeats: 3
      best_recipes: 2
      trial_steps:
        - train: {batch_size: 64, train: {max_steps: 8, eval_every: 4}}
  - report
metadata: {intended_purpose: test}
"""


def _events(kind, folder="."):
    from nnforge.ledger import Ledger

    with Ledger.open(os.path.join(folder, ".nnforge/ledger.db")) as led:
        return [e for e in led.events() if e.kind == kind]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search-step")
    (folder / "r.yaml").write_text(RECIPE, encoding="utf-8")
    old = os.getcwd()
    os.chdir(folder)
    try:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["run", "r.yaml", "--json"]) == 0
    finally:
        os.chdir(old)
    return folder, json.loads(buf.getvalue())


def test_every_trial_is_a_measured_run_in_the_ledger_and_constraints_mark_infeasible(searched):
    folder, out = searched
    trials = sorted((e.data for e in _events("search.trial", folder)), key=lambda d: d["number"])
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert out["metrics"]["search_trials"] == 4 and out["metrics"]["search_complete"] == 4
    (started,), (finished,) = _events("search.started", folder), _events("search.finished", folder)
    assert started.data["sampler"] == "random" and started.data["constraints"] == ["parameters <= 2000"]
    feasible = {t["number"]: t["feasible"] for t in finished.data["trials"]}
    for t in trials:
        assert t["state"] == "complete" and t["trial_run"] == f"{out['run_id']}-t{t['number']:04d}"
        assert set(t["params"]) == {"model.options.hidden[0]", "steps[0].optimizer_options.lr"}
        m = t["metrics"]
        assert m["latency_b1_ms"] > 0 and m["energy_j_per_inference"] > 0 and t["energy_source"] in ("rapl", "estimate")
        assert m["train_steps"] == 8 and 0 <= m["val_accuracy"] <= 1
        # the parameters of [h, 16] hidden layers on 64 inputs and 10 classes: the sampled width was built
        h = t["params"]["model.options.hidden[0]"]
        assert m["parameters"] == 64 * h + h + h * 16 + 16 + 16 * 10 + 10
        assert feasible[t["number"]] is (m["parameters"] <= 2000)  # a constraint, not a penalty: metrics kept
        assert m["size_mb"] == os.path.getsize(folder / out["run_dir"] / "trials" / t["trial_run"]
                                               / "model.safetensors") / 1e6
    assert {True, False} <= set(feasible.values())  # both widths were sampled (seed 3)
    ok = [t for t in trials if feasible[t["number"]]]
    best = max(ok, key=lambda t: (t["metrics"]["val_accuracy"], -t["number"]))
    assert out["metrics"]["search_best_trial"] == best["number"]
    assert out["metrics"]["search_best_val_accuracy"] == best["metrics"]["val_accuracy"]
    assert out["metrics"]["search_infeasible"] == sum(not f for f in feasible.values())


def test_best_recipes_run_unchanged_and_reproduce_their_trial(searched, tmp_path, monkeypatch):
    folder, out = searched
    run_dir = folder / out["run_dir"]
    trials = {e.data["number"]: e.data for e in _events("search.trial", folder)}
    (finished,) = _events("search.finished", folder)
    n_feasible = sum(bool(t["feasible"]) for t in finished.data["trials"])
    assert finished.data["recipes"] == [f"best-{k}.yaml" for k in range(1, min(2, n_feasible) + 1)]
    best = trials[out["metrics"]["search_best_trial"]]
    doc = yaml.safe_load((run_dir / "best-1.yaml").read_text())
    assert doc["model"]["options"]["hidden"] == [best["params"]["model.options.hidden[0]"], 16]
    assert doc["steps"] == [{"train": {"batch_size": 64, "train": {"max_steps": 8, "eval_every": 4},
                                       "optimizer_options": {"lr": best["params"]["steps[0].optimizer_options.lr"]}}}]
    # the run's model is the best trial's
    from safetensors.torch import load_file

    mine = load_file(run_dir / "model.safetensors")
    theirs = load_file(run_dir / "trials" / best["trial_run"] / "model.safetensors")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    report = (run_dir / "report.html").read_text()
    assert "<h2>Search</h2>" in report and 'href="best-1.yaml"' in report
    # nnforge run accepts it unchanged, and the trial's figures come back
    shutil.copy(run_dir / "best-1.yaml", tmp_path / "best-1.yaml")
    monkeypatch.chdir(tmp_path)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", "best-1.yaml", "--json"]) == 0
    again = json.loads(buf.getvalue())["metrics"]
    assert again["val_accuracy"] == best["metrics"]["val_accuracy"]
    assert again["val_loss"] == best["metrics"]["val_loss"]


PRUNED = """
name: digits-prune-search
seed: 0
model: {architecture: digits-mlp, options: {hidden: [16]}}
data: {dataset: digits}
steps:
  - search:
      space:
        steps[0].optimizer_options.lr: {kind: categorical, choices: [0.05, 0.0000001]}
      objectives: [{metric: val_loss}]
      sampler: random
      seed: 6                       # samples 0.05, 0.05, then 1e-7
      pruner: median
      pruner_options: {n_startup_trials: 1, n_warmup_steps: 0}
      trials: 3
      latency_repeats: 2
      trial_steps:
        - train: {batch_size: 64, train: {max_steps: 12, eval_every: 3}}
"""


def test_the_pruner_stops_poor_trials_through_the_train_step(workdir, capsys):
    (workdir / "r.yaml").write_text(PRUNED, encoding="utf-8")
    assert main(["run", "r.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    trials = {e.data["number"]: e.data for e in _events("search.trial")}
    pruned = [t for t in trials.values() if t["state"] == "pruned"]
    assert pruned and out["metrics"]["search_pruned"] == len(pruned)
    for t in pruned:  # stopped at an evaluation before the last step, at the learning rate that cannot learn
        assert t["params"]["steps[0].optimizer_options.lr"] == 0.0000001
        assert t["metrics"]["train_steps"] < 12 and "latency_b1_ms" not in t["metrics"]
    complete = [t for t in trials.values() if t["state"] == "complete"]
    assert complete and all(t["metrics"]["train_steps"] == 12 for t in complete)


FINETUNE = """
name: text-search
seed: 0
model: {name: minilm}
data: {dataset: shakespeare-genre, options: {passages_per_play: 6, path: TEXTS}, max_train: 48}
steps:
  - search:
      space:
        steps[0].train.lr: {kind: categorical, choices: [0.0005, 0.002]}
      objectives: [{metric: val_accuracy, direction: maximize}]
      sampler: random
      pruner: median
      pruner_options: {n_startup_trials: 5}  # reports, never prunes: the curves are what this test reads
      trials: 2
      latency_repeats: 2
      trial_steps:
        - finetune: {lora: {r: 2, layers: [5]}, train: {epochs: 2, batch_size: 16, patience: 5}}
"""


def test_the_finetune_step_reports_each_epoch_to_the_pruner(workdir, capsys, shakespeare_texts):
    import optuna

    (workdir / "r.yaml").write_text(FINETUNE.replace("TEXTS", str(shakespeare_texts)), encoding="utf-8")
    assert main(["run", "r.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    trials = {e.data["number"]: e.data for e in _events("search.trial")}
    assert len(trials) == 2 and all(t["state"] == "complete" for t in trials.values())
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        os.path.join(out["run_dir"], "search.journal")))
    (study,) = optuna.get_all_study_summaries(storage)
    for trial in optuna.load_study(study_name=study.study_name, storage=storage).trials:
        steps_per_epoch = trials[trial.number]["metrics"]["finetune_steps"] / 2
        assert sorted(trial.intermediate_values) == [steps_per_epoch, 2 * steps_per_epoch]  # one report per epoch
        m = trials[trial.number]["metrics"]
        assert trial.value == m["val_accuracy"] and m["finetune_energy_j"] > 0


SCREENED = """
name: digits-screen
seed: 0
model: {architecture: digits-mlp, options: {hidden: [16]}}
data: {dataset: digits}
steps:
  - search:
      space:
        model.options.hidden[0]: {kind: int, low: 8, high: 512, log: true}
      objectives: [{metric: val_accuracy, direction: maximize}]
      constraints: ["latency_b1_ms <= LIMIT"]
      sampler: random
      trials: 3
      latency_repeats: 2
      screen: {measure: 6, held_out: 2, repeats: 3}
      trial_steps:
        - train: {batch_size: 64, train: {max_steps: 4, eval_every: 4}}
"""


@pytest.mark.parametrize(("limit", "screened"), [("0.000001", True), ("100000", False)])
def test_screening_predicts_every_trial_and_skips_those_over_the_latency_limit(workdir, capsys, limit, screened):
    (workdir / "r.yaml").write_text(SCREENED.replace("LIMIT", limit), encoding="utf-8")
    assert main(["run", "r.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (fitted,) = _events("search.screen")
    assert fitted.data["measured"] == 6 and fitted.data["held_out"] == 2 and len(fitted.data["pairs"]) == 6
    assert all(p["latency_b1_ms"] > 0 and 8 <= p["params"]["model.options.hidden[0]"] <= 512 for p in fitted.data["pairs"])
    assert out["metrics"]["search_screen_median_abs_err"] == fitted.data["median_abs_err"] >= 0
    trials = [e.data for e in _events("search.trial")]
    assert len(trials) == 3
    (finished,) = _events("search.finished")
    attrs = {t["number"]: t for t in finished.data["trials"]}
    assert all(a["predicted_latency_b1_ms"] > 0 for a in attrs.values())  # every trial was predicted
    from nnforge.govern import render_report
    from nnforge.ledger import Ledger

    with Ledger.open(".nnforge/ledger.db") as led:
        html = render_report(out["run_dir"], led)
    assert "Screening: 6 candidates built untrained and timed" in html
    assert f"pruned before training ({3 if screened else 0})" in html
    if screened:  # all predicted over 1 ns: pruned before training, no trial run folder trained anything
        assert all(t["state"] == "pruned" and t["pruned_reason"].startswith("screened: predicted") for t in trials)
        assert out["metrics"]["search_screened"] == 3 and all("screened" in a for a in attrs.values())
        assert not _events("step.finished") or all(e.data["step"] != "train" for e in _events("step.finished"))
    else:
        assert all(t["state"] == "complete" for t in trials) and out["metrics"]["search_screened"] == 0


def _bad(option_lines: str, space: str = "steps[0].optimizer_options.lr: {kind: float, low: 0.001, high: 0.01}",
         objective: str = "val_accuracy") -> str:
    return f"""
name: bad
model: {{architecture: digits-mlp}}
data: {{dataset: digits}}
steps:
  - search:
      space:
        {space}
      objectives: [{{metric: {objective}, direction: maximize}}]
      trials: 2
      trial_steps: [{{train: {{train: {{max_steps: 2, eval_every: 2}}}}}}]
{option_lines}
"""


@pytest.mark.parametrize(("recipe", "message"), [
    (_bad("", space="steps[0].optimizer_options.lrr: {kind: float, low: 0.001, high: 0.01}"), "lrr"),
    (_bad("", space="steps[1].batch_size: {kind: int, low: 8, high: 64}"), "index [1] does not exist"),
    (_bad("", space="model.options.widths: {kind: int, low: 8, high: 64}"), "widths"),
    (_bad("", space="model.options.dropout: {kind: float, low: 0.5, high: 1.5}"), "dropout"),
    (_bad("", objective="val_acc"), "the objective metric 'val_acc' is not one a trial produces"),
    (_bad("      constraints: ['latency_ms <= 3']"), "the constraint metric 'latency_ms'"),
    (_bad("      storage: no/such/folder/study.journal"), "does not exist"),
    (_bad("      trial_steps: [{search: {}}]"), "cannot run a search step"),
    (_bad("      pruner: hyperband", objective="latency_b1_ms"), "measured only after it"),
    (_bad("      sampler_options: {n_startup_trial: 3}"), "n_startup_trial"),
    (_bad("      pruner: median\n      pruner_options: {warmup: 3}"), "warmup"),
    (_bad("      screen: {measure: 8, held_out: 2}", space="model.options.dropout: {kind: float, low: 0.0, high: 0.3}"),
     "there is none; add one"),
    (_bad("      constraints: ['latency_b1_ms <= 3']\n      screen: {measure: 8, held_out: 2}"), "no space path is a model value"),
    (_bad("      constraints: ['latency_b1_ms <= 3']\n      screen: {measure: 5, held_out: 3}",
          space="model.options.dropout: {kind: float, low: 0.0, high: 0.3}"), "must exceed held_out"),
    (_bad("      constraints: ['latency_b1_ms <= 3']\n      screen: {measure: 8, held_out: 2}\n"
          "      trial_steps: [{train: {train: {max_steps: 2, eval_every: 2}}}, {quantize: {scheme: int8}}]",
          space="model.options.dropout: {kind: float, low: 0.0, high: 0.3}"), "change it after training"),
])
def test_bad_search_options_are_refused_before_anything_is_written(workdir, capsys, recipe, message):
    (workdir / "r.yaml").write_text(recipe, encoding="utf-8")
    assert main(["run", "r.yaml"]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not (workdir / "runs").exists() and not (workdir / ".nnforge").exists()


def test_the_builtin_search_recipe_passes_every_check():
    from nnforge.recipes import load_recipe
    from nnforge.recipes.runner import prepare

    recipe = load_recipe("charlm-search")
    prepare(recipe)  # every space path builds a char-GPT, the train step fits the corpus, the metrics exist
    (step,) = [s for s in recipe.steps if s.name == "search"]
    assert [o.metric for o in step.config.objectives] == ["val_loss", "latency_b1_ms"]
    assert step.config.pruner == "hyperband"


def test_the_progress_display_gets_trials_done_the_best_so_far_and_the_pruned_and_failed_counts():
    from types import SimpleNamespace

    from nnforge.recipes.steps.search import _progress
    from nnforge.search import Objective, SearchProgress, TrialRecord

    seen = []

    class Display:
        def __call__(self, task, done, total):
            seen.append((task, done, total))

        def describe(self, task, text):
            seen.append((task, text))

    best = TrialRecord(number=2, state="complete", params={}, metrics={"val_loss": 1.2345, "latency_b1_ms": 0.5},
                       values=[1.2345, 0.5], duration_s=1.0, feasible=True)
    update = _progress(SimpleNamespace(progress=Display()), [Objective(metric="val_loss"),
                                                              Objective(metric="latency_b1_ms")])
    update(SearchProgress(total=8, complete=3, pruned=2, failed=1, running=1, best=[best]))
    assert seen == [("trials", 6, 8), ("trials", "best val_loss 1.234, latency_b1_ms 0.5 (front of 1) · 2 pruned · "
                                                  "1 failed")]


DIVERGING = """
name: digits-diverge
seed: 0
model: {architecture: digits-mlp, options: {hidden: [16]}}
data: {dataset: digits}
steps:
  - search:
      space:
        steps[0].optimizer_options.lr: {kind: categorical, choices: [0.01, 1.0e+11]}
      objectives: [{metric: val_loss}]
      sampler: random
      trials: 3
      latency_repeats: 2
      trial_steps:
        - train: {batch_size: 64, train: {max_steps: 6, eval_every: 3}}
"""


def test_a_failing_trial_is_recorded_with_its_error_and_the_study_goes_on(workdir, capsys):
    (workdir / "r.yaml").write_text(DIVERGING, encoding="utf-8")
    assert main(["run", "r.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    trials = [e.data for e in _events("search.trial")]
    failed = [t for t in trials if t["state"] == "failed"]
    assert len(trials) == 3 and out["metrics"]["search_failed"] == len(failed) >= 1
    for t in failed:  # the lr that diverges; the trial's own run recorded why it stopped
        assert t["params"]["steps[0].optimizer_options.lr"] == 1.0e11 and "TrainingDivergedError" in t["error"]
    (best,) = [t for t in trials if t["number"] == out["metrics"]["search_best_trial"]]
    assert best["state"] == "complete" and best["params"]["steps[0].optimizer_options.lr"] == 0.01
