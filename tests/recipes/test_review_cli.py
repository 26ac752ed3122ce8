"""`nnforge review enqueue` and `nnforge report` on a real (small) quickstart run."""

from __future__ import annotations

import json
import shutil

import pytest

from nnforge.cli import main
from nnforge.govern.review import text_sha256
from nnforge.ledger import Ledger

pytestmark = pytest.mark.slow

TEXTS = ["Now is the winter of our discontent\nMade glorious summer by this sun of York;",
         "",
         "def main(argv):\n    return subprocess.run(argv, check=True).returncode"]


@pytest.fixture
def copied(small_run_copy):
    """The small run's folder copied as the working folder, with a texts file."""
    work, run_dir = small_run_copy
    (work / "texts.txt").write_text("\n".join(t.replace("\n", " ") for t in TEXTS) + "\n")
    return work, run_dir.name


def test_enqueue_predicts_applies_the_rules_and_records_hashes_only(copied, capsys):
    work, run_id = copied
    led = Ledger.open(work / ".nnforge" / "ledger.db")
    before = len(led.events(kind="review.enqueued"))
    led.close()
    # every output below confidence 1.0 is reviewed; the OOD guard comes first where it flags an input
    assert main(["review", "enqueue", run_id, "--file", "texts.txt", "--ood", "--min-confidence", "1.0",
                 "--variant", "int8", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    lines = [t.replace("\n", " ") for t in TEXTS if t]
    assert [i["input_text"] for i in items] == lines  # empty lines skipped, order kept
    assert {i["reason"] for i in items} <= {"ood", "low_confidence"} and items[1]["reason"] == "ood"  # code is OOD
    assert all(i["run"] == run_id and i["variant"] == "int8" and i["status"] == "open" for i in items)
    led = Ledger.open(work / ".nnforge" / "ledger.db")
    events = led.events(kind="review.enqueued")[before:]
    assert [e.data["input_sha256"] for e in events] == [text_sha256(t) for t in lines]
    assert not any(t in json.dumps(e.data) for e in events for t in lines)  # the ledger holds hashes, not texts
    assert led.verify().ok
    led.close()
    # plain output: counts per reason
    assert main(["review", "enqueue", run_id, "--file", "texts.txt", "--min-confidence", "0", "--audit-rate", "1"]) == 0
    assert "2 texts predicted, 2 queued for review low_confidence: 0, ood: 0, audit: 2" in capsys.readouterr().out


@pytest.mark.parametrize(("setup", "args", "message"), [
    (lambda w: (w / "empty.txt").write_text("\n\n"), ["--file", "empty.txt"], "no texts"),
    (lambda w: None, ["--file", "missing.txt"], "no such file"),
    # a recorded guard that was deleted is a modified run: refused by the integrity check, naming the file
    (lambda w: shutil.rmtree(next((w / "runs").iterdir()) / "ood-guard"), ["--file", "texts.txt", "--ood"],
     "ood-guard/detector.safetensors"),
    (lambda w: None, ["--file", "texts.txt", "--audit-rate", "1.5"], "--audit-rate must be in [0, 1]"),
])
def test_enqueue_bad_input_exits_2_and_queues_nothing(copied, capsys, setup, args, message):
    work, run_id = copied
    setup(work)
    led = Ledger.open(work / ".nnforge" / "ledger.db")
    before = len(led.events())
    led.close()
    assert main(["review", "enqueue", run_id, *args]) == 2
    assert message in capsys.readouterr().err
    assert len(Ledger.open(work / ".nnforge" / "ledger.db").events()) == before


def test_report_is_rendered_again_and_the_rendering_recorded(copied, capsys):
    work, run_id = copied
    report = work / "runs" / run_id / "report.html"
    report.unlink()
    assert main(["report", run_id]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{run_id}/report.html") and report.is_file()
    assert "<h2>Regression suites</h2>" in report.read_text()
    led = Ledger.open(work / ".nnforge" / "ledger.db")
    ev = led.events(kind="cli.report")[-1]
    assert ev.run == run_id and len(ev.data["sha256"]) == 64
    assert main(["report", run_id, "--ledger", str(work / "elsewhere.db")]) == 2  # never a new, empty ledger
    assert not (work / "elsewhere.db").exists()


def test_predict_and_embed_print_one_line_per_text(copied, capsys):
    work, run_id = copied
    assert main(["predict", run_id, "--file", "texts.txt", "--text", "O Romeo, Romeo!"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [r[2] for r in rows] == ["O Romeo, Romeo!"] + [t.replace("\n", " ") for t in TEXTS if t]  # --text first
    assert all(r[0] in ("comedy", "tragedy", "history") and 0 < float(r[1]) <= 1 for r in rows)
    assert main(["embed", run_id, "--text", "O Romeo, Romeo!", "--variant", "int8"]) == 0
    assert capsys.readouterr().out.strip().endswith("(384 dims)\tO Romeo, Romeo!")
    assert main(["predict", run_id, "--file", "nowhere.txt"]) == 2
    assert main(["predict", run_id]) == 2
    assert "give at least one --text" in capsys.readouterr().err
