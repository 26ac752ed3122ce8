"""The quickstart pipeline end to end on a small slice: artifacts, metrics, ledger, reload, CLI."""

from __future__ import annotations

import json
import sqlite3

import pytest

from nnforge.cli import main

pytestmark = pytest.mark.slow

def test_run_writes_every_artifact_and_metric(small_run):
    _, run_dir = small_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "metrics.json", "report.html", "model.safetensors", "model-int8.safetensors",
            "predictions.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary files left behind
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in ("baseline_majority_acc", "baseline_logreg_acc", "fp32_acc", "int8_acc", "fp32_size_mb",
                "int8_size_mb", "int8_cos_mean", "fp32_latency_b1_ms", "int8_latency_b1_ms"):
        assert isinstance(m[key], float), key
    assert m["int8_size_mb"] <= 0.30 * m["fp32_size_mb"]
    assert m["finetune_energy_j"] > 0 and m["int8_energy_j_per_inference"] > 0  # training and inference energy
    assert m["int8_cos_mean"] >= 0.995
    assert 0.0 <= m["fp32_acc"] <= 1.0


def test_the_gain_over_the_frozen_probe_is_paired_on_the_same_test_items_and_said_in_words(small_run):
    _, run_dir = small_run
    m = json.loads((run_dir / "metrics.json").read_text())
    preds = json.loads((run_dir / "predictions.json").read_text())
    probe = preds["baselines"]["logreg"]
    assert len(probe) == len(preds["labels"]) == len(preds["predictions"]["fp32"])
    probe_right = [p == y for p, y in zip(probe, preds["labels"], strict=True)]
    tuned_right = [p == y for p, y in zip(preds["predictions"]["fp32"], preds["labels"], strict=True)]
    assert sum(probe_right) / len(probe) == pytest.approx(m["baseline_logreg_acc"], abs=1e-6)
    assert m["finetune_gain"] == pytest.approx(m["fp32_acc"] - m["baseline_logreg_acc"], abs=1e-6)
    low, high = m["finetune_gain_ci"]
    assert low <= m["finetune_gain"] <= high
    assert m["finetune_gain_significant"] == (low > 0 or high < 0)
    sections = json.loads((run_dir / "sections.json").read_text())
    assert sections["finetune_gain"]["mcnemar"]["b"] == sum(t and not p for t, p in zip(tuned_right, probe_right, strict=True))
    assert m["finetune_gain_mcnemar_p"] == sections["finetune_gain"]["mcnemar"]["p_value"]
    html = (run_dir / "report.html").read_text()
    assert "Is fine-tuning worth it?" in html
    assert sections["finetune_gain"]["verdict"] in html


def test_report_gains_slices_flips_calibration_ood_and_the_gate(small_run):
    from nnforge.explain import OODGuard

    _, run_dir = small_run
    sections = json.loads((run_dir / "sections.json").read_text())
    rows = {r["slice"]: r for r in sections["slices"]["rows"]}
    assert {"all", "class:comedy", "class:tragedy", "class:history", "play:hamlet"} <= set(rows)
    assert rows["play:hamlet"]["rare"] and rows["all"]["fp32"]["low"] <= rows["all"]["fp32"]["accuracy"]
    assert sections["flips"]["int8"]["n"] == rows["all"]["n"]
    assert {"fp32", "int8"} <= set(sections["calibration"]) and sections["calibration"]["fp32"]["temperature"] > 0
    assert sum(sections["calibration"]["fp32"]["reliability"]["after"]["counts"]) == rows["all"]["n"]
    far = {d["name"]: d["stdlib-docstrings"]["auroc"] for d in sections["ood"]["detectors"]}
    assert set(far) == {"msp", "energy", "mahalanobis", "knn", "token-ngram"} and max(far.values()) > 0.9
    guard = OODGuard.load(run_dir / "ood-guard")
    assert guard.detector.name == "knn" and guard.recall == 0.95
    fitted = sections["ood"]["fitted_on"]  # the training passages and their rewrites that read differently
    assert fitted["benign_rewrites"] > 0 and "no-punctuation" in fitted["shifts"]
    assert guard.metadata["fitted_on"] == {"train": fitted["train"], "benign_rewrites": fitted["benign_rewrites"]}
    assert guard.detector.state()["bank"].shape[0] == fitted["train"] + fitted["benign_rewrites"]
    assert sections["suites"]["small-gate"]["passed"]
    html = (run_dir / "report.html").read_text()
    assert "Reliability diagram, fp32" in html
    for title in ("Slices", "Compression flips", "Calibration", "Out-of-distribution detection", "Regression suites"):
        assert f"<h2>{title}</h2>" in html, title


def test_the_int8_variant_is_also_evaluated_in_the_native_runtime(small_run):
    from nnforge.deploy.native.encoder import _library

    _, run_dir = small_run
    m = json.loads((run_dir / "metrics.json").read_text())
    lib, isa = _library(None)
    if lib is None:  # no C++ compiler: the step says so in its log and adds no column
        assert "int8-native_acc" not in m
        pytest.skip("the native runtime is not built here")
    if isa == "scalar":  # no SIMD path on this CPU: slower than PyTorch, so the step does not spend time on it
        assert "int8-native_acc" not in m
        pytest.skip("the native runtime has only its portable (scalar) path on this CPU")
    # the same weights file, another engine: its own quality, fidelity and cost figures
    assert m["int8-native_size_mb"] == m["int8_size_mb"]
    assert m["int8-native_cos_mean"] >= 0.99 and m["int8-native_agreement"] >= 0.8
    assert m["int8-native_latency_b1_ms"] > 0 and "int8-native_peak_memory_mb" not in m
    sections = json.loads((run_dir / "sections.json").read_text())
    assert "int8-native" in sections["flips"] and "int8-native" in sections["calibration"]
    html = (run_dir / "report.html").read_text()
    assert "<th>int8-native</th>" in html
    # and the same runtime from a finished run, by name: the int8 file, run natively
    import nnforge
    from nnforge.errors import ConfigError

    run = nnforge.load_run(run_dir)
    assert run.variant_file("int8-native") == run.variant_file("int8")
    probs = run.model("int8-native").predict_proba(["Once more unto the breach"])
    assert probs.shape == (1, 3) and abs(float(probs.sum()) - 1) < 1e-5
    with pytest.raises(ConfigError, match="fp32-native"):  # a float model: nothing for the int8 runtime
        run.model("fp32-native")


def test_report_is_self_contained_and_prints_the_head(small_run):
    folder, run_dir = small_run
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script src=" not in html and "http://" not in html
    assert "Ledger head at generation" in html and "frozen embeddings + logistic regression" in html


def test_ledger_records_steps_files_and_verifies(small_run, capsys):
    folder, run_dir = small_run
    db = folder / ".nnforge" / "ledger.db"
    assert main(["ledger", "verify", "--ledger", str(db)]) == 0
    capsys.readouterr()
    assert main(["ledger", "show", "--ledger", str(db), "--json", "--limit", "0"]) == 0
    events = json.loads(capsys.readouterr().out)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished"
    assert kinds.count("step.started") == kinds.count("step.finished") == 7  # baselines … gate, explain, report
    started = [e for e in events if e["kind"] == "step.started"]
    assert started[1]["data"]["config"]["lora"]["r"] == 8  # the full config is recorded
    written = {e["data"]["name"]: e["data"]["sha256"] for e in events if e["kind"] == "artifact.written"}
    from nnforge.ledger import file_sha256

    assert written["model:int8"] == file_sha256(run_dir / "model-int8.safetensors")
    assert events[0]["data"]["seed"] == 0


def test_load_run_predict_and_embed(small_run, capsys, tmp_path):
    import nnforge

    _, run_dir = small_run
    run = nnforge.load_run(run_dir)
    assert set(run.variants) == {"fp32", "int8"}
    rows = run.predict(["Now is the winter of our discontent"], record=False)  # the shared run's ledger stays as is
    assert rows[0]["label"] in ("comedy", "tragedy", "history") and abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-5
    led = str(tmp_path / "calls.db")
    assert main(["predict", str(run_dir), "--text", "Once more unto the breach", "--json", "--ledger", led,
                 "--actor", "alice"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in ("comedy", "tragedy", "history")
    assert main(["embed", str(run_dir), "--text", "a", "--variant", "fp32", "--json", "--ledger", led]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["embedding"]) == 384
    from nnforge.ledger import Ledger, file_sha256

    calls = Ledger.open(led).events()
    assert [e.kind for e in calls] == ["cli.predict", "cli.embed"] and calls[0].actor == "alice"
    assert calls[0].data["variant"] == "int8" and calls[1].data["variant"] == "fp32"
    assert calls[0].data["weights_sha256"] == file_sha256(run_dir / "model-int8.safetensors")
    assert calls[0].data["inputs"]["texts"] == 1


def test_corrupt_weights_are_refused_with_exit_2(small_run, tmp_path, capsys):
    import shutil

    _, run_dir = small_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    data = bytearray((copy / "model-int8.safetensors").read_bytes())
    data[20:40] = b"\x00" * 20
    (copy / "model-int8.safetensors").write_bytes(bytes(data))
    assert main(["predict", str(copy), "--text", "x"]) == 2
    assert "safetensors" in capsys.readouterr().err


def test_tampering_with_the_demo_ledger_is_named(small_run, tmp_path, capsys):
    folder, _ = small_run
    db = tmp_path / "ledger.db"
    with sqlite3.connect(folder / ".nnforge" / "ledger.db") as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # includes what is still in the write-ahead log
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET body = replace(body, '\"seed\":0', '\"seed\":1') WHERE seq = 1")
    assert main(["ledger", "verify", "--ledger", str(db)]) == 1
    assert "event #1" in capsys.readouterr().out


def test_generated_documents_cite_every_slice_and_ood_figure_exactly(small_run, tmp_path):
    """The evaluate step records its slice and OOD tables in its ledger event: no figure needs a dagger."""
    folder, run_dir = small_run
    out = tmp_path / "docs"
    assert main(["docs", str(run_dir), "--format", "md", "--out", str(out),
                 "--ledger", str(folder / ".nnforge" / "ledger.db")]) == 0
    annex = (out / "annex-iv.md").read_text()
    for n in range(1, 10):
        assert f"\n## {n}. " in annex, n
    card = (out / "model-card.md").read_text()
    assert "class:history" in card and "play:hamlet" in card
    if "int8-native_acc" in json.loads((run_dir / "metrics.json").read_text()):  # the runtime column is explained
        assert "int8-native: the int8 variant's weights file executed by nnforge's native runtime" in card
    assert "]†" not in card and "]†" not in annex
