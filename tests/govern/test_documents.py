"""Generated documents (model card, instructions for use, Annex IV draft) from a run folder and ledger built
by hand with the events a recipe run records (no recipe runs)."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest

from nnforge.cli import main
from nnforge.govern.documents import DOCUMENTS, TODO, build_documents, render_document, write_documents
from nnforge.ledger import Ledger

RUN = "20261128-000000-abcdef"
EVIL = "<script>alert('x')</script>"
ANNEX_IV = ["1. General description", "2. Elements of the AI system", "3. Monitoring, functioning and control",
            "4. Performance metrics", "5. Risk management", "6. Changes through the lifecycle",
            "7. Harmonised standards", "8. EU declaration of conformity", "9. Post-market monitoring"]


def _slice(acc: float) -> dict:
    return {"accuracy": acc, "low": acc - 0.05, "high": acc + 0.05}


@pytest.fixture()
def run(tmp_path: Path) -> tuple[Path, Path]:
    """A quickstart-like run folder and its ledger; returns (run_dir, ledger_path)."""
    run_dir = tmp_path / "runs" / RUN
    run_dir.mkdir(parents=True)
    db = tmp_path / "ledger.db"
    led = Ledger.open(db, actor="tester")
    led.append("note", {"text": "an earlier event of another run"})
    recipe = {"name": "quickstart", "description": "demo", "model": {"name": "minilm"},
              "metadata": {"intended_purpose": "Demonstration only.", "owner": EVIL, "contact": "",
                           "risk_notes": ["One author only."]}}
    led.append("run.started", {"recipe": recipe, "recipe_sha256": "ab" * 32, "seed": 0, "git_commit": "c0ffee",
                               "environment": {"python": "3.11.7", "torch": "2.13.0+cpu", "cores": 2}}, run=RUN)
    led.append("data.loaded", {"name": "toy", "labels": ["a", "b"], "source": {"seed": 0},
                               "splits": {"train": {"n": 40, "class_counts": [25, 15], "sha256": "11" * 32},
                                          "test": {"n": 20, "class_counts": [10, 10], "sha256": "22" * 32}}}, run=RUN)
    led.append("model.loaded", {"num_classes": 2, "parameters": 1234, "source": {"name": "minilm"}}, run=RUN)
    led.append("step.started", {"step": "finetune", "index": 0, "config": {"lr": 0.001}}, run=RUN)
    (run_dir / "model.safetensors").write_bytes(b"weights")  # the recorded bytes, so that the run verifies
    led.append("artifact.written", {"name": "model:fp32", "path": "model.safetensors", "bytes": 7,
                                    "sha256": hashlib.sha256(b"weights").hexdigest()}, run=RUN)
    led.append("step.finished", {"step": "finetune", "index": 0, "details": {}, "seconds": 3.0,
                                 "metrics": {"finetune_best_val_acc": 0.61, "finetune_steps": 12}}, run=RUN)
    led.append("step.started", {"step": "evaluate", "index": 1, "config": {"slices": ["class"]}}, run=RUN)
    evaluate = led.append("step.finished", {"step": "evaluate", "index": 1, "details": {}, "seconds": 1.0,
                                            "metrics": {"fp32_acc": 0.65, "fp32_macro_f1": 0.6, "fp32_ece": 0.12}},
                          run=RUN)
    led.append("suite.evaluated", {"suite": "toy", "variant": "fp32", "passed": True, "checks": [
        {"check": "accuracy >= 0.40", "threshold": 0.4, "value": 0.65, "verdict": "pass"},
        {"check": "slice:class:a accuracy >= 0.25", "threshold": 0.25, "value": 0.7, "verdict": "pass"}]}, run=RUN)
    led.append("run.finished", {"metrics": {}, "artifacts": {}}, run=RUN)
    config = {"run_id": RUN, "variants": {"fp32": "model-fp32.safetensors"}, "recipe": recipe}
    sections = {"slices": {"confidence": 0.95, "rare_below": 5, "reference": "fp32", "variants": ["fp32"], "rows": [
        {"slice": "all", "n": 20, "rare": False, "fp32": _slice(0.65)},
        {"slice": "class:a", "n": 10, "rare": False, "fp32": _slice(0.7)},
        {"slice": "class:b", "n": 10, "rare": False, "fp32": _slice(0.6)}]}}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "sections.json").write_text(json.dumps(sections))
    (run_dir / "metrics.json").write_text(json.dumps({"finetune_best_val_acc": 0.61, "finetune_steps": 12,
                                                      "fp32_acc": 0.65, "fp32_macro_f1": 0.6, "fp32_ece": 0.12}))
    assert evaluate.seq == 9
    led.close()
    return run_dir, db


def test_all_documents_in_both_formats(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, db = run
    led = Ledger.open(db)
    for fmt in ("md", "html"):
        paths, verification = write_documents(run_dir, led, fmt, tmp_path / "out")
        assert verification.ok
        assert [p.name for p in paths] == [f"{k}.{fmt}" for k in DOCUMENTS]
        head = led.head()
        for p in paths:
            text = p.read_text(encoding="utf-8")
            assert head in text and "(event #11)" in text  # the head and its sequence number
            assert TODO in text


def test_annex_iv_has_nine_sections_none_empty(run: tuple[Path, Path]) -> None:
    run_dir, db = run
    docs = {d.kind: d for d in build_documents(run_dir, Ledger.open(db))}
    titles = [s.title for s in docs["annex-iv"].sections]
    assert len(titles) == 9
    for want, got in zip(ANNEX_IV, titles, strict=True):
        assert got.startswith(want)
    md = render_document(docs["annex-iv"], "md")
    for want in ANNEX_IV:
        assert f"## {want}" in md
    for doc in docs.values():
        for sec in doc.sections:
            for s in [sec, *sec.subsections]:
                assert not s.is_empty(), f"{doc.kind}: section {s.title!r} is empty"
                assert s.blocks or s.subsections


def test_every_table_number_cites_an_existing_event(run: tuple[Path, Path]) -> None:
    run_dir, db = run
    led = Ledger.open(db)
    seqs = {e.seq for e in led.events()}
    md = render_document(build_documents(run_dir, led)[0], "md")  # the model card: metrics + slices
    table_lines = [ln for ln in md.splitlines() if ln.startswith("| ") and "[^" in ln]
    assert any("class:a" in ln for ln in table_lines)
    numbers = 0
    for ln in table_lines:
        for cell in ln.strip("| ").split(" | ")[1:]:  # the first cell is the row's label
            for cite in re.finditer(r"[^\s\[]+\[\^(\d+)\]†?", cell):
                numbers += 1
                assert int(cite.group(1)) in seqs
            rest = re.sub(r"[^\s\[]+\[\^\d+\]†?", "", cell)
            assert not re.search(r"\d", rest), f"a figure in {cell!r} has no event citation"
    assert numbers >= 10
    # a footnote per figure, not "[event #N]" inline: tables stay readable; each footnote is defined at the end
    assert "[event #" not in md and re.search(r"^\[\^9\]: ledger event #9 \(step.finished", md, re.M)
    # figures stored in an event cite it exactly; slice values only in sections.json are marked †
    assert "0.650[^9]" in md and "0.700[^10]" in md and "0.600[^9]†" in md


def test_html_escapes_metadata_and_links_events(run: tuple[Path, Path]) -> None:
    run_dir, db = run
    led = Ledger.open(db)
    for doc in build_documents(run_dir, led):
        html = render_document(doc, "html")
        assert "<script>" not in html and "&lt;script&gt;" in html
        assert 'href="#event-9"' in html or doc.kind == "annex-iv" or 'href="#event-2"' in html
        assert f'title="sha256 {led.events(run=RUN)[0].hash}' in html and "[event #" not in html
        md = render_document(doc, "md")
        assert "<script>" not in md


def test_cli_writes_and_fails_on_broken_chain(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, db = run
    out = tmp_path / "docs"
    assert main(["docs", str(run_dir), "--format", "md", "--out", str(out), "--ledger", str(db)]) == 0
    assert (out / "annex-iv.md").is_file()
    assert main(["docs", str(tmp_path / "nope"), "--ledger", str(db)]) == 2
    assert main(["docs", str(run_dir), "--format", "pdf", "--ledger", str(db)]) == 2
    with sqlite3.connect(db) as con:  # tamper with an event body
        con.execute("UPDATE events SET body = replace(body, 'c0ffee', 'decade') WHERE seq = 2")
    assert main(["docs", str(run_dir), "--format", "html", "--out", str(out), "--ledger", str(db)]) == 1
    assert "THE LEDGER CHAIN DID NOT VERIFY" in (out / "model-card.html").read_text(encoding="utf-8")
