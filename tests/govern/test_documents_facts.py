"""Documents never overstate: a failed or interrupted run says so at the top (and `nnforge docs` refuses it
without --allow-failed); promotions, revocations, review outcomes and the recipe's metadata fill their sections;
the OOD guard's measured AUROC stands next to what the documents claim about it; a fine-tuning that did not beat
its linear-probe start is said in words."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nnforge.cli import main
from nnforge.govern.documents import TODO, build_documents, render_document
from nnforge.ledger import Ledger

RUN = "20261201-000000-feed00"
META = {"intended_purpose": "Sorting support tickets.", "owner": "Acme", "contact": "ml@acme.example",
        "licence": "Apache-2.0", "intended_users": ["support agents"], "out_of_scope_uses": ["hiring decisions"],
        "risk_notes": ["English only."], "oversight_measures": ["A lead reviews every low-confidence ticket."],
        "post_market_monitoring": "Weekly review of the OOD rejection rate."}
METRICS = {"fp32_acc": 0.7, "finetune_beats_probe": False, "finetune_probe_gain": -0.02,
           "finetune_probe_gain_ci": [-0.06, 0.02]}


def _build(tmp_path: Path, end: str = "run.finished", metadata: dict | None = None) -> tuple[Path, Path]:
    run_dir = tmp_path / "runs" / RUN
    (run_dir / "ood-guard").mkdir(parents=True)
    (run_dir / "ood-guard" / "guard.json").write_text("{}")
    db = tmp_path / "ledger.db"
    recipe = {"name": "tickets", "description": "", "data": {"dataset": "tickets"},
              "metadata": META if metadata is None else metadata}
    with Ledger.open(db, actor="tester") as led:
        led.append("run.started", {"recipe": recipe, "recipe_sha256": "ab" * 32, "seed": 0}, run=RUN)
        led.append("step.started", {"step": "evaluate", "index": 0, "config": {"ood_guard": "knn"}}, run=RUN)
        led.append("artifact.written", {"name": "ood-guard:guard.json", "path": "ood-guard/guard.json",
                                        "sha256": hashlib.sha256(b"{}").hexdigest(), "bytes": 2}, run=RUN)
        ood = {"sets": ["near-poems", "far-code"], "detectors": [
            {"name": "knn", "near-poems": {"auroc": 0.491}, "far-code": {"auroc": 0.97}, "id_accept": 0.95}]}
        led.append("step.finished", {"step": "evaluate", "index": 0, "metrics": METRICS,
                                     "details": {"ood": ood}}, run=RUN)
        if end == "run.finished":
            p = led.append("model.promoted", {"stage": "production", "variant": "fp32", "approver": "carla",
                                              "suites": [{"name": "gate", "passed": True}]}, run=RUN)
            led.append("model.revoked", {"promotion_seq": p.seq, "approver": "dora", "reason": "drift"}, run=RUN)
            for i, reason in enumerate(["low_confidence", "ood", "ood"]):
                led.append("review.enqueued", {"item": i + 1, "reason": reason}, run=RUN)
            led.append("review.decided", {"item": 1, "decision": "approved", "reviewer": "ana"}, run=RUN)
            led.append("review.decided", {"item": 2, "decision": "out_of_scope", "reviewer": "ben"}, run=RUN)
            led.append("run.finished", {"metrics": METRICS}, run=RUN)
        else:
            led.append("run.failed", {"error": end}, run=RUN)
    (run_dir / "config.json").write_text(json.dumps({"run_id": RUN, "recipe": recipe, "variants": {"fp32": "m.st"},
                                                      "final_variant": "fp32", "recipe_source": ""}))
    (run_dir / "metrics.json").write_text(json.dumps(METRICS))
    return run_dir, db


def _docs(run_dir: Path, db: Path) -> dict[str, str]:
    with Ledger.open(db) as led:
        return {d.kind: render_document(d, "md") for d in build_documents(run_dir, led)}


@pytest.mark.parametrize(("error", "status"), [("StepFailedError: boom", "FAILED"),
                                               ("KeyboardInterrupt: ", "INTERRUPTED")])
def test_a_run_that_did_not_finish_says_so_at_the_top_and_docs_needs_allow_failed(tmp_path, capsys, error, status):
    run_dir, db = _build(tmp_path, end=error)
    for kind, md in _docs(run_dir, db).items():
        top = md.split("\n## ")[0]
        assert f"THIS RUN DID NOT FINISH ({status})" in top and "do not deploy" in top, kind
    assert main(["docs", str(run_dir), "--ledger", str(db)]) == 2
    assert f"the run is {status.lower()}, not finished" in capsys.readouterr().err
    assert not (run_dir / "docs").exists()
    assert main(["docs", str(run_dir), "--ledger", str(db), "--allow-failed"]) == 0
    assert f"({status})" in (run_dir / "docs" / "model-card.md").read_text()


def test_metadata_promotions_and_reviews_fill_their_sections(tmp_path):
    docs = _docs(*_build(tmp_path))
    card, use, annex = docs["model-card"], docs["instructions-for-use"], docs["annex-iv"]
    assert "Apache-2.0" in card and "support agents" in card and "hiring decisions" in card
    oversight = use.split("## (d) Human oversight")[1].split("\n## ")[0]
    assert "A lead reviews every low-confidence ticket." in oversight and TODO not in oversight
    assert "3[^" in oversight and "approved: 1, out_of_scope: 1" in oversight and "ana, ben" in oversight
    six = annex.split("## 6. Changes through the lifecycle")[1].split("\n## ")[0]
    assert "production" in six and "carla" in six and "revoked" in six and "dora: drift" in six
    nine = annex.split("## 9. Post-market monitoring plan")[1]
    assert "Weekly review of the OOD rejection rate." in nine and TODO not in nine.split("## Cited")[0]
    assert "ml@acme.example" in card and "THIS RUN DID NOT FINISH" not in card


def test_empty_metadata_is_marked_to_be_completed_naming_the_recipe_field(tmp_path):
    use = _docs(*_build(tmp_path, metadata={}))["instructions-for-use"]
    assert "recipe metadata: oversight_measures" in use and "recipe metadata: intended_users, out_of_scope_uses" in use


def test_the_guard_claim_carries_its_measured_auroc_and_a_weak_set_is_not_claimed(tmp_path):
    for md in _docs(*_build(tmp_path)).values():
        assert "near-poems 0.491[^" in md and "far-code 0.970[^" in md
        assert "can route inputs like those of far-code to a person" in md
        assert "On near-poems its AUROC is below 0.8" in md and "must not be relied on" in md
        assert "can route unfamiliar inputs" not in md


def test_a_fine_tuning_that_did_not_beat_its_probe_is_said(tmp_path):
    card = _docs(*_build(tmp_path))["model-card"]
    assert "fine-tuning did NOT beat its linear-probe start" in card and "-0.020[^" in card


@pytest.mark.parametrize(("metadata", "message"), [
    ({"intended_users": "agents"}, "metadata.intended_users' parameter must satisfy: Input should be a valid list"),
    ({"oversight_measures": [" "]}, "metadata.oversight_measures\\[0\\]' parameter must satisfy: String should have at least 1"),
    ({"licence": 5}, "metadata.licence' parameter must satisfy: Input should be a valid string"),
    ({"licenses": "MIT"}, "metadata.licenses: unknown field"),
])
def test_recipe_metadata_is_validated(metadata, message):
    from nnforge.errors import ConfigError
    from nnforge.recipes.schema import parse_recipe

    base = {"name": "x", "model": {"architecture": "digits-mlp"}, "data": {"dataset": "digits"}, "steps": ["train"]}
    assert parse_recipe({**base, "metadata": META}).metadata.licence == "Apache-2.0"
    with pytest.raises(ConfigError, match=message):
        parse_recipe({**base, "metadata": metadata})
