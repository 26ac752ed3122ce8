"""``nnforge explain`` on a finished run, and the ``explain`` step: pages written, ledger events recorded, the
report and the generated documents citing them, bad requests refused with exit code 2."""

from __future__ import annotations

import json

import pytest

from nnforge.cli import main

pytest.importorskip("captum")


def _events(ledger_path, event_kind, **match):
    """The ledger's events of ``event_kind`` whose data has the ``match`` values (the small run's own explain step
    recorded three explanations already)."""
    from nnforge.ledger import Ledger

    with Ledger.open(ledger_path) as led:
        return [e for e in led.events() if e.kind == event_kind and all(e.data.get(k) == v for k, v in match.items())]


def test_explain_a_test_passage_writes_a_page_and_a_ledger_event(small_run_copy, capsys):
    work, run = small_run_copy
    capsys.readouterr()
    assert main(["explain", str(run), "--index", "1", "--method", "gradient_x_input", "--json"]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["input"]["source"] == "test[1]" and doc["method"] == "gradient_x_input"
    page = run.parent.parent / doc["page"]["path"] if not doc["page"]["path"].startswith("/") else doc["page"]["path"]
    html = open(page, encoding="utf-8").read()
    assert "What the model saw" in html and "How typical the input is" in html  # the run's OOD guard was read
    [event] = _events(work / ".nnforge" / "ledger.db", "model.explained", method="gradient_x_input")
    assert event.data["input"]["sha256"] == doc["input"]["sha256"] and event.run == run.name
    assert event.data["top_positive"] and event.data["typicality"]["detector"] == "knn"


def test_explain_data_lists_the_training_passages_behind_an_answer(small_run_copy, capsys):
    work, run = small_run_copy
    capsys.readouterr()
    assert main(["explain", "data", str(run), "--example", "2", "--top", "2"]) == 0
    printed = capsys.readouterr().out
    assert "most helpful" in printed and "most harmful" in printed and "train[" in printed
    [event] = _events(work / ".nnforge" / "ledger.db", "model.explained", kind="training-data-attribution")
    assert event.data["method"] == "trak" and len(event.data["top_positive"]) == 2
    assert main(["explain", "data", str(run)]) == 2  # no --example


@pytest.mark.parametrize("argv, message", [
    (["--text", "a passage", "--index", "1"], "not both"),
    (["--index", "100000"], "the test split has examples"),
    (["--method", "saliency", "--index", "0"], "unknown attribution method"),
    ([], "give a text"),
])
def test_bad_explain_requests_exit_2_and_record_nothing(small_run_copy, capsys, argv, message):
    work, run = small_run_copy
    before = len(_events(work / ".nnforge" / "ledger.db", "model.explained"))
    assert main(["explain", str(run), *argv]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert len(_events(work / ".nnforge" / "ledger.db", "model.explained")) == before


DIGITS = """
name: digits-explained
seed: 0
model: {architecture: digits-cnn, options: {channels: [4, 8], hidden: 16}}
data: {dataset: digits}
steps:
  - train: {optimizer: adamw, optimizer_options: {lr: 0.003}, batch_size: 64, train: {max_steps: 30}}
  - explain: {examples: 2}
  - report
metadata: {intended_purpose: test, owner: tests}
"""


def test_the_explain_step_reports_and_the_documents_cite_it(workdir, capsys):
    (workdir / "r.yaml").write_text(DIGITS)
    assert main(["run", "r.yaml"]) == 0
    [run] = list((workdir / "runs").iterdir())
    sections = json.loads((run / "sections.json").read_text())
    rows = sections["explain"]["examples"]
    assert len(rows) == 2 and all(r["completeness_error"] <= 0.01 for r in rows)
    assert all((run / r["page"]).is_file() for r in rows)
    report = (run / "report.html").read_text()
    assert "<h2>Explanations</h2>" in report and "<svg" in report  # digits: heatmaps
    assert len(_events(workdir / ".nnforge" / "ledger.db", "model.explained")) == 2  # one per example
    capsys.readouterr()
    assert main(["explain", "data", str(run), "--example", "4", "--top", "3", "--json"]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "training-data-attribution" and len(doc["helpful"]) == 3 == len(doc["harmful"])
    assert doc["helpful"][0]["score"] >= doc["helpful"][-1]["score"] > doc["harmful"][0]["score"]
    assert main(["explain", "data", str(run), "--example", "4", "--method", "tracin"]) == 2  # no checkpoints kept
    assert main(["docs", str(run)]) == 0
    annex = next((run / "docs").glob("annex*iv*.md")).read_text()
    assert "what the model relies on" in annex and "integrated_gradients" in annex and "training-data-attribution" in annex


CHARLM = """
name: charlm-inside
seed: 0
model: {architecture: char-gpt, options: {n_layer: 2, n_head: 2, n_embd: 32, block_size: 32}}
data: {dataset: shakespeare-char}
steps:
  - train: {optimizer: adamw, optimizer_options: {lr: 0.01}, batch_size: 12, eval_batches: 2,
            train: {max_steps: 30, eval_every: 30}}
  - explain: {examples: 1, sae_steps: 40}
  - report
metadata: {intended_purpose: test, owner: tests}
"""


def test_a_char_lm_run_reports_its_sparse_autoencoder_and_lenses(workdir, shakespeare_texts):
    (workdir / "r.yaml").write_text(CHARLM.replace("{dataset: shakespeare-char}",
                                                   f"{{dataset: shakespeare-char, options: {{path: '{shakespeare_texts}'}}}}"))
    assert main(["run", "r.yaml"]) == 0
    [run] = list((workdir / "runs").iterdir())
    inside = json.loads((run / "sections.json").read_text())["inside"]
    assert inside["sae"]["site"] == "residual.1" and inside["sae"]["l0"] <= 32
    assert inside["sae"]["val_loss_with_sae"] > 0 and inside["sae"]["features"]
    assert [layer["layer"] for layer in inside["lens"]["layers"]] == [0, 1, 2]
    report = (run / "report.html").read_text()
    assert "<h2>Inside the model</h2>" in report and "tuned lens" in report
    kinds = {e.data["kind"] for e in _events(workdir / ".nnforge" / "ledger.db", "model.explained")}
    assert kinds == {"feature-attribution", "sparse-autoencoder", "lens"}
