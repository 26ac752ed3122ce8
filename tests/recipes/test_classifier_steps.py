"""evaluate, gate and baselines on classifiers over tensors (digits images, CSV tables), on any split, and the
preflight checks that refuse what the data or the model cannot supply."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from nnforge.errors import ConfigError, DataError
from nnforge.ledger import Ledger
from nnforge.recipes.runner import load_data, run_recipe
from nnforge.recipes.schema import parse_recipe
from nnforge.recipes.steps import STEPS

SUITE = """
name: digits-small
split: test
reference: fp32
slices: [class]
checks:
  - accuracy >= logreg - 0.2
  - slice:class:0 accuracy >= 0.0
  - flip_rate <= 0.5
"""


def _recipe(tmp_path, steps, model="digits-mlp", data=None):
    doc = {"name": "own", "seed": 0, "model": {"architecture": model, "options": {"hidden": [16]}},
           "data": data or {"dataset": "digits"}, "steps": steps}
    return parse_recipe(doc, source=yaml.safe_dump(doc))


def _plan(recipe):
    splits, dataset = load_data(recipe)
    return SimpleNamespace(recipe=recipe, splits=splits, dataset=dataset, model=None, task=None)


def _preflight(recipe, index):
    step = recipe.steps[index]
    STEPS.get(step.name)().preflight(_plan(recipe), step.config)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    (tmp / "suite.yaml").write_text(SUITE)
    recipe = _recipe(tmp, [
        "baselines",
        {"train": {"batch_size": 64, "optimizer_options": {"lr": 0.01}, "train": {"max_steps": 60, "eval_every": 60}}},
        {"quantize": {"scheme": "int8"}},
        {"evaluate": {"repeats": 3, "memory": False}},
        {"gate": {"suite": str(tmp / "suite.yaml")}}])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only compete for a busy machine's cores
    try:
        with Ledger.open(str(tmp / "ledger.db")) as ledger:
            return run_recipe(recipe, runs_dir=tmp / "runs", ledger=ledger)
    finally:
        torch.set_num_threads(threads)


def test_training_and_inference_energy_are_recorded_labelled_and_reported(digits_run):
    import json

    from nnforge.govern import render_report

    m = digits_run.metrics
    assert m["train_energy_j"] > 0 and m["fp32_energy_j_per_inference"] > 0 and m["int8_energy_j_per_inference"] > 0
    sections = json.loads((digits_run.run_dir / "sections.json").read_text())
    train = sections["train"]["energy"]
    assert train["joules"] == m["train_energy_j"] and train["cpu_s"] > 0
    assert train["source"] in ("rapl", "estimate") and train["label"] == sections["energy"]["label"]
    if train["source"] == "estimate":  # the figure is CPU time x the power figure, and says so
        assert train["joules"] == pytest.approx(train["cpu_s"] * train["watts_per_core"])
        assert "estimate: CPU time x" in train["label"]
    with Ledger.open(str(digits_run.run_dir.parent.parent / "ledger.db")) as led:
        finished = {e.data["step"]: e.data for e in led.run_events(digits_run.run_id) if e.kind == "step.finished"}
        html = render_report(digits_run.run_dir, led)
    assert finished["train"]["details"]["energy"]["joules"] == m["train_energy_j"]
    assert finished["evaluate"]["metrics"]["int8_energy_j_per_inference"] == m["int8_energy_j_per_inference"]
    assert "Energy of training" in html and f"energy per batch-1 inference (mJ; {sections['energy']['label']})" in html


def test_evaluate_measures_a_digits_classifier_per_class(digits_run):
    import json

    m = digits_run.metrics
    assert 0.1 < m["fp32_acc"] <= 1 and 0 < m["fp32_macro_f1"] <= 1
    assert set(m["fp32_per_class_acc"]) == {str(i) for i in range(10)}
    assert m["fp32_min_class_acc"] == min(m["fp32_per_class_acc"].values())
    assert 0.9 <= m["int8_agreement"] <= 1 and 0.99 < m["int8_cos_mean"] <= 1.0001
    assert m["int8_latency_b1_ms"] > 0 and m["int8_size_mb"] < m["fp32_size_mb"]
    assert 0 < m["baseline_logreg_acc"] <= 1 and "logreg_gain" in m and len(m["logreg_gain_ci"]) == 2
    sections = json.loads((digits_run.run_dir / "sections.json").read_text())
    cm = np.asarray(sections["confusion"]["int8"]["matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 360  # the 20% test split of 1,797 digits
    assert np.trace(cm) / cm.sum() == pytest.approx(m["int8_acc"])
    assert "ood" not in sections  # no OOD sets for images
    assert m["gate_digits-small_passed"] == 1


def test_the_suite_compares_with_the_runs_logreg_baseline(digits_run):
    import json

    saved = json.loads((digits_run.run_dir / "suite-digits-small.json").read_text())
    check = next(c for c in saved["checks"] if c["check"].startswith("accuracy >= logreg"))
    assert check["other_value"] == pytest.approx(digits_run.metrics["baseline_logreg_acc"])


def test_evaluate_on_another_named_split_and_a_csv_table(tmp_path, one_torch_thread):
    rng = np.random.default_rng(0)
    for split, n in (("train", 90), ("test", 20), ("holdout", 30)):
        x = rng.normal(size=(n, 4)).astype(np.float32)
        y = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no")
        rows = ["f1,f2,f3,f4,label"] + [",".join(f"{v:.4f}" for v in r) + f",{c}" for r, c in zip(x, y, strict=True)]
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    from nnforge import models

    models.register("test-table-mlp", lambda **o: torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), task="tabular-classification", replace=True)
    try:
        files = {s: str(tmp_path / f"{s}.csv") for s in ("train", "test", "holdout")}
        data = {"dataset": "arrays", "options": {"files": files}, "val_split": None}
        doc = {"name": "table", "model": {"architecture": "test-table-mlp"}, "data": data,
               "steps": [{"train": {"batch_size": 16, "train": {"max_steps": 5, "eval_every": 5}}},
                         {"evaluate": {"split": "holdout", "repeats": 3, "memory": False}}]}
        recipe = parse_recipe(doc, source=yaml.safe_dump(doc))
        _preflight(recipe, 1)
        result = run_recipe(recipe, runs_dir=tmp_path / "runs", ledger=Ledger.open(str(tmp_path / "l.db")))
        assert set(result.metrics["fp32_per_class_acc"]) == {"no", "yes"}
        assert 0 <= result.metrics["fp32_acc"] <= 1
        saved = __import__("json").loads((result.run_dir / "predictions.json").read_text())
        assert saved["split"] == "holdout" and len(saved["labels"]) == 30
    finally:
        models.unregister("test-table-mlp")


def test_preflight_refuses_a_split_the_data_lack(tmp_path):
    recipe = _recipe(tmp_path, [{"evaluate": {"split": "validation"}}])
    with pytest.raises(ConfigError, match="'validation'.*splits test, train"):
        _preflight(recipe, 0)
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE.replace("split: test", "split: val"))
    recipe = _recipe(tmp_path, ["baselines", {"gate": {"suite": str(suite)}}])
    with pytest.raises(ConfigError, match="evaluates split 'val'"):
        _preflight(recipe, 1)


def test_preflight_refuses_what_array_data_cannot_supply(tmp_path):
    recipe = _recipe(tmp_path, [{"evaluate": {"slices": ["class", {"meta": "play"}]}}])
    with pytest.raises(ConfigError, match="metadata"):
        _preflight(recipe, 0)
    recipe = _recipe(tmp_path, ["baselines", {"gate": {"suite": "quickstart"}}])  # typo probes on images
    with pytest.raises(ConfigError, match="text perturbations"):
        _preflight(recipe, 1)
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    recipe = _recipe(tmp_path, [{"gate": {"suite": str(suite)}}])  # 'logreg' without a baselines step
    with pytest.raises(ConfigError, match="add a 'baselines' step before the gate"):
        _preflight(recipe, 0)


def test_preflight_refuses_a_char_lm(tmp_path, shakespeare_texts):
    doc = {"name": "lm", "model": {"architecture": "char-gpt"},
           "data": {"dataset": "shakespeare-char", "options": {"path": str(shakespeare_texts)}},
           "steps": [{"evaluate": {}}]}
    recipe = parse_recipe(doc)
    with pytest.raises(ConfigError, match="task is 'char-lm'.*classifiers"):
        STEPS.get("evaluate")().preflight(SimpleNamespace(recipe=recipe, splits={"dataset": object()},
                                                          dataset=None, model=None, task=None), recipe.steps[0].config)


def test_array_files_errors_name_the_file(tmp_path):
    from nnforge.data.arrays import array_classification_from_files

    np.savez(tmp_path / "a.npz", x=np.zeros((4, 3)), y=np.array([0, 1, 0, 1]))
    ds = array_classification_from_files({"train": str(tmp_path / "a.npz")}, input_shape=[3, 1])
    assert ds.splits["train"][0].shape == (4, 3, 1) and ds.label_names == ["0", "1"]
    np.savez(tmp_path / "one.npz", x=np.zeros((4, 3)), y=np.zeros(4, dtype=np.int64))
    with pytest.raises(DataError, match="single class"):
        array_classification_from_files({"train": str(tmp_path / "one.npz")})
    (tmp_path / "t.csv").write_text("a,b\n1,x\n")
    with pytest.raises(DataError, match="no column 'label'"):
        array_classification_from_files({"train": str(tmp_path / "t.csv")})
    with pytest.raises(DataError, match="no such file"):
        array_classification_from_files({"train": str(tmp_path / "missing.npz")})


def test_predict_reads_npz_npy_and_csv_inputs_and_records_the_use(digits_run, tmp_path, capsys):
    import json

    from sklearn.datasets import load_digits

    from nnforge.cli import main

    d = load_digits()
    x = (d.images[:5] / 16).astype(np.float32)
    np.savez(tmp_path / "few.npz", x=x[:, None])
    np.save(tmp_path / "few.npy", x.reshape(5, 64))
    (tmp_path / "few.csv").write_text("\n".join([",".join(f"p{i}" for i in range(64)),
                                                 *(",".join(f"{v:.4f}" for v in row) for row in x.reshape(5, 64))]))
    answers = []
    for name in ("few.npz", "few.npy", "few.csv"):
        assert main(["predict", str(digits_run.run_dir), "--inputs", str(tmp_path / name), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert len(rows) == 5 and all(0 < r["confidence"] <= 1 and r["label"] in map(str, range(10)) for r in rows)
        answers.append([r["label"] for r in rows])
    assert answers[0] == answers[1] == answers[2]
    with Ledger.open(str(digits_run.run_dir.parent.parent / "ledger.db")) as led:
        used = [e for e in led.run_events(digits_run.run_id) if e.data.get("inputs", {}).get("rows") == 5]
    assert len(used) == 3
    assert main(["predict", str(digits_run.run_dir), "--text", "a digit"]) == 2
    assert "--inputs FILE" in capsys.readouterr().err
    assert main(["embed", str(digits_run.run_dir), "--text", "a digit"]) == 2
    assert "predict --inputs" in capsys.readouterr().err


def test_a_bad_evaluate_split_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    from nnforge.cli import main

    monkeypatch.chdir(tmp_path)
    doc = {"name": "own", "model": {"architecture": "digits-mlp"}, "data": {"dataset": "digits"},
           "steps": [{"train": {"train": {"max_steps": 2}}}, {"evaluate": {"split": "validation"}}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(doc))
    assert main(["run", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert "steps[1] (evaluate)" in err and "'validation'" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
