"""Commands on a finished run use the run's own ledger (from any folder), and never a ledger without it."""

from __future__ import annotations

import json

import pytest

from nnforge.cli import main
from nnforge.ledger import Ledger

pytestmark = pytest.mark.slow


@pytest.fixture
def moved(small_run_copy, tmp_path, monkeypatch):
    """The copied run, its config pointing at the copy's ledger, and the working folder somewhere else."""
    work, run_dir = small_run_copy
    config = json.loads((run_dir / "config.json").read_text())
    config["ledger"] = str(work / ".nnforge" / "ledger.db")
    (run_dir / "config.json").write_text(json.dumps(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return work, run_dir, elsewhere


def _events(path, kind):
    led = Ledger.open(path)
    try:
        return led.events(kind=kind)
    finally:
        led.close()


def test_from_another_folder_the_run_recorded_ledger_is_used(moved, capsys):
    work, run_dir, elsewhere = moved
    ledger = work / ".nnforge" / "ledger.db"
    before = len(_events(ledger, "cli.predict"))
    assert main(["predict", str(run_dir), "--text", "Now is the winter of our discontent", "--json"]) == 0
    capsys.readouterr()
    assert len(_events(ledger, "cli.predict")) == before + 1
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    assert str(ledger) in html and "finetune" in html  # rendered from the run's ledger, with its steps
    assert main(["docs", str(run_dir)]) == 0
    assert not (elsewhere / ".nnforge").exists()  # no stray ledger was started here


def test_a_ledger_that_did_not_record_the_run_is_refused(moved, capsys):
    work, run_dir, elsewhere = moved
    other = Ledger.open(elsewhere / "other.db")
    other.append("cli.predict", {}, run=run_dir.name)  # mentions the run, but did not record it
    other.close()
    report = (run_dir / "report.html").read_bytes()
    for argv in (["report", str(run_dir)], ["docs", str(run_dir)],
                 ["evaluate", str(run_dir), "--suite", "quickstart"]):
        assert main([*argv, "--ledger", "other.db"]) == 2, argv
        assert "did not record run" in capsys.readouterr().err
    assert (run_dir / "report.html").read_bytes() == report and not (run_dir / "docs").exists()
    assert not list(run_dir.glob("suite-quickstart*"))


def test_evaluate_refuses_a_junit_path_onto_the_ledger_before_writing(small_run_copy, capsys):
    work, run_dir = small_run_copy
    assert main(["evaluate", str(run_dir), "--suite", "small-gate.yaml", "--junit", ".nnforge/ledger.db"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["ledger", "verify"]) == 0


def test_text_files_and_texts_for_predict(small_run_copy, capsys):
    work, run_dir = small_run_copy
    (work / "bom.txt").write_bytes("\ufeffNow is the winter\n\nof our discontent\n".encode())
    (work / "latin1.txt").write_bytes(b"caf\xe9\n")
    assert main(["predict", str(run_dir), "--file", "bom.txt", "--json"]) == 0
    assert [r["text"] for r in json.loads(capsys.readouterr().out)] == ["Now is the winter", "of our discontent"]
    assert main(["predict", str(run_dir), "--file", "latin1.txt"]) == 2
    assert "latin1.txt:1: not UTF-8" in capsys.readouterr().err
    assert main(["predict", str(run_dir), "--text", "   "]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["predict", str(run_dir), "--text", "one\ttwo\nthree"]) == 0
    line = capsys.readouterr().out.rstrip("\n")
    assert "\n" not in line and line.split("\t")[2] == "one\\ttwo\\nthree"  # still three fields on one line


def test_report_on_a_tampered_ledger_is_written_with_the_warning_and_exits_1(small_run_copy, capsys):
    import sqlite3

    work, run_dir = small_run_copy
    with sqlite3.connect(work / ".nnforge" / "ledger.db") as conn:
        conn.execute("UPDATE events SET body = replace(body, '\"seed\":0', '\"seed\":1') WHERE seq = 1")
    assert main(["report", str(run_dir)]) == 1
    assert "chain BROKEN" in capsys.readouterr().err
    assert "chain BROKEN" in (run_dir / "report.html").read_text()


def test_report_shows_recorded_metrics_and_names_an_edited_metrics_file(small_run_copy, capsys):
    work, run_dir = small_run_copy
    metrics = json.loads((run_dir / "metrics.json").read_text())
    key = next(k for k, v in metrics.items() if isinstance(v, float))
    true_value = metrics[key]
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, key: 0.9999}))
    assert main(["report", str(run_dir)]) == 1
    assert "metrics.json was ALTERED" in capsys.readouterr().err
    html = (run_dir / "report.html").read_text()
    assert "ALTERED" in html and key in html and "0.9999" not in html and repr(true_value)[:6] in html
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(run_dir)]) == 0
    assert "ALTERED" not in (run_dir / "report.html").read_text()
