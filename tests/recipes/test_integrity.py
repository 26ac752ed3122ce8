"""Integrity at every load: a run file whose bytes differ from what the ledger recorded (same size, bytes
flipped) is refused by load_run, predict, embed, evaluate and docs — exit 2 naming the file, IntegrityError in
Python — unless --allow-modified, which the ledger records; a Python prediction is recorded like the CLI's.
The run is tiny (a digits MLP trained for 3 steps, then int8), built once per module and copied per test."""

from __future__ import annotations

import json
import shutil

import pytest

from nnforge.cli import main
from nnforge.errors import IntegrityError
from nnforge.ledger import Ledger

RECIPE = """
name: tiny-digits
seed: 0
model: {architecture: digits-mlp}
data: {dataset: digits}
steps:
  - train: {batch_size: 64, train: {max_steps: 3, eval_every: 3}}
  - quantize: {scheme: int8}
metadata: {intended_purpose: integrity tests, owner: tests}
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import os

    import torch

    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.yaml").write_text(RECIPE)
    old, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(folder)
    torch.set_num_threads(1)  # two threads spin against each other on a loaded 2-core machine
    try:
        assert main(["run", "tiny.yaml", "--json"]) == 0
    finally:
        os.chdir(old)
        torch.set_num_threads(threads)
    return folder


@pytest.fixture
def run(tiny_run, tmp_path, monkeypatch, capsys):
    """A copy of the tiny run's working folder (runs/ and .nnforge/) as the current folder; returns the run."""
    work = tmp_path / "work"
    shutil.copytree(tiny_run, work)
    monkeypatch.chdir(work)
    capsys.readouterr()
    run_dir = next((work / "runs").iterdir())
    config = json.loads((run_dir / "config.json").read_text())
    config["ledger"] = str(work / ".nnforge" / "ledger.db")  # the copy's own ledger
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def flip(path, at=64, n=100):
    """Flip ``n`` bytes of ``path`` in place (the size stays the same)."""
    data = bytearray(path.read_bytes())
    data[at:at + n] = bytes(b ^ 0xFF for b in data[at:at + n])
    path.write_bytes(bytes(data))


def _kinds(kind):
    with Ledger.open(".nnforge/ledger.db") as led:
        return led.events(kind=kind)


def test_flipped_weights_are_refused_by_every_load_path(run, capsys):
    import nnforge

    assert nnforge.load_run(run).ledger is not None  # intact: it loads
    weights = run / "model-int8.safetensors"
    size = weights.stat().st_size
    flip(weights)
    assert weights.stat().st_size == size
    with pytest.raises(IntegrityError, match="model-int8.safetensors"):
        nnforge.load_run(run)
    for argv in (["predict", str(run), "--text", "x"], ["embed", str(run), "--text", "x"],
                 ["evaluate", str(run), "--suite", "quickstart"], ["docs", str(run)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "model-int8.safetensors" in err and "--allow-modified" in err, argv
    assert not (run / "docs").exists()
    assert _kinds("cli.predict") == [] and _kinds("integrity.overridden") == []


def test_allow_modified_is_recorded_and_load_run_predict_records_its_use(run, capsys):
    import nnforge
    from _tiny import tiny_text_classifier

    loaded = nnforge.load_run(run, actor="alice")
    loaded._models["int8"] = tiny_text_classifier(num_classes=10)  # a text classifier in place of the digits MLP: only the record matters
    rows = loaded.predict(["Now is the winter of our discontent"])
    used = _kinds("model.used")
    assert len(used) == 1 and used[0].actor == "alice" and used[0].data["call"] == "predict"
    assert used[0].data["variant"] == "int8" and used[0].data["results"] == {rows[0]["label"]: 1}
    flip(run / "model.safetensors")
    with pytest.raises(IntegrityError, match="model.safetensors"):
        nnforge.load_run(run)
    nnforge.load_run(run, allow_modified=True)
    assert main(["docs", str(run), "--allow-modified"]) == 0
    capsys.readouterr()
    overrides = _kinds("integrity.overridden")
    assert [o.data["use"] for o in overrides] == ["load", "docs"]
    assert overrides[0].data["files"][0]["path"].endswith("model.safetensors")


def test_an_edited_metrics_file_is_refused_as_altered(run):
    import nnforge
    from nnforge.govern.integrity import verify_run

    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "val_accuracy": 0.99}))
    with pytest.raises(IntegrityError, match="metrics.json shows figures the ledger recorded otherwise"):
        nnforge.load_run(run)
    check = verify_run(run, use="look", allow_modified=True)
    assert check.status == "altered" and check.recorded_status == "finished"
    assert check.metrics_altered == ["val_accuracy"] and check.metrics["val_accuracy"] == metrics["val_accuracy"]


def test_weights_changed_between_load_and_use_are_refused(run):
    import nnforge

    loaded = nnforge.load_run(run)
    weights = run / "model-int8.safetensors"
    flip(weights, at=weights.stat().st_size - 150)  # in the tensors, not the header: the file still loads
    with pytest.raises(IntegrityError, match="changed since the run was loaded"):
        loaded.model("int8")
    assert type(nnforge.load_run(run, allow_modified=True).model("int8")).__name__ == "DigitsMLP"


def test_evaluate_with_allow_modified_runs_and_is_recorded(run, capsys):
    (run.parent.parent / "tiny-suite.yaml").write_text("name: tiny\nchecks:\n  - size_mb <= 100\n")
    weights = run / "model-int8.safetensors"
    flip(weights, at=weights.stat().st_size - 150)
    assert main(["evaluate", str(run), "--suite", "tiny-suite.yaml"]) == 2
    assert main(["evaluate", str(run), "--suite", "tiny-suite.yaml", "--allow-modified"]) == 0
    capsys.readouterr()
    assert [o.data["use"] for o in _kinds("integrity.overridden")] == ["evaluate"]
