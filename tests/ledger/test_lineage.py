"""Lineage of artifacts, from a ledger built by hand with the events a recipe run records (no recipe runs)."""

from __future__ import annotations

import hashlib
import json

import pytest

from nnforge.cli import main
from nnforge.errors import ConfigError
from nnforge.ledger import Ledger, lineage
from nnforge.ledger._lineage import config_summary

FP32 = hashlib.sha256(b"fp32 weights").hexdigest()
INT8 = hashlib.sha256(b"int8 weights").hexdigest()
PRED = hashlib.sha256(b"predictions").hexdigest()
SUITE = hashlib.sha256(b"suite yaml").hexdigest()
RUN = "20261128-053421-148a00"
OTHER = "20261128-040020-6cd06d"


def _run(led: Ledger, run: str, *, suite_passed: bool, int8: str = INT8) -> dict[str, int]:
    """Append the events of a quickstart-like run; returns the seq of the interesting ones."""
    seqs: dict[str, int] = {}

    def add(key: str, kind: str, data: dict) -> None:
        seqs[key] = led.append(kind, data, run=run).seq

    add("run", "run.started", {"recipe": {"name": "quickstart", "sha256": "ab" * 32, "seed": 0},
                               "run_dir": f"runs/{run}", "environment": {}})
    add("data", "data.loaded", {"name": "toy", "splits": {"train": {"n": 10, "sha256": "11" * 32},
                                                          "test": {"n": 4, "sha256": "22" * 32}}})
    add("model", "model.loaded", {"source": {"name": "minilm", "options": {}}, "parameters": 1234})
    add("baselines", "step.started", {"step": "baselines", "index": 0, "config": {"C": [1.0]}})
    led.append("step.finished", {"step": "baselines", "index": 0, "metrics": {"baseline_acc": 0.5}}, run=run)
    add("finetune", "step.started", {"step": "finetune", "index": 1,
                                     "config": {"train": {"epochs": 2, "lr": 0.001}, "lora": {"r": 8}}})
    add("fp32", "artifact.written", {"name": "model:fp32", "path": "model.safetensors", "sha256": FP32, "bytes": 9})
    led.append("step.finished", {"step": "finetune", "index": 1, "metrics": {"finetune_best_epoch": 1}}, run=run)
    add("quantize", "step.started", {"step": "quantize", "index": 2,
                                     "config": {"scheme": "int8", "activations": "dynamic", "calibrator": None}})
    add("int8", "artifact.written", {"name": "model:int8", "path": "model-int8.safetensors", "sha256": int8,
                                     "bytes": 3})
    add("quantize_done", "step.finished", {"step": "quantize", "index": 2,
                                           "metrics": {"int8_modules_quantized": 41}})
    add("evaluate", "step.started", {"step": "evaluate", "index": 3, "config": {"reference": "fp32"}})
    add("pred", "artifact.written", {"name": "predictions", "path": "predictions.json", "sha256": PRED, "bytes": 5})
    add("evaluate_done", "step.finished", {"step": "evaluate", "index": 3,
                                           "metrics": {"fp32_acc": 0.47, "int8_acc": 0.465, "int8_agreement": 0.98}})
    add("suite", "suite.evaluated", {"suite": "quickstart", "suite_sha256": SUITE, "variant": "int8",
                                     "passed": suite_passed, "failed": [] if suite_passed else ["latency_ms <= 250"],
                                     "checks": [{"check": "accuracy >= 0.40", "verdict": "pass"}]})
    add("finished", "run.finished", {"artifacts": {}})
    return seqs


@pytest.fixture()
def led(tmp_path):
    return Ledger.open(tmp_path / "l.db", actor="tester")


def test_chain_nodes_order_and_seqs(led):
    seqs = _run(led, RUN, suite_passed=True)
    lin = lineage(led, f"{RUN}:model:int8")
    assert lin.artifact["sha256"] == INT8 and lin.artifact["seq"] == seqs["int8"] and not lin.approved
    kinds = [n.kind for n in lin.nodes]
    assert kinds == ["run", "data", "model", "step", "step", "artifact", "step", "artifact", "evaluation", "suite",
                     "approval"]
    got = [n.seq for n in lin.nodes]
    assert got == [seqs["run"], seqs["data"], seqs["model"], seqs["baselines"], seqs["finetune"], seqs["fp32"],
                   seqs["quantize"], seqs["int8"], seqs["evaluate_done"], seqs["suite"], None]
    by_seq = {n.seq: n for n in lin.nodes}
    assert by_seq[seqs["data"]].details["splits"]["train"]["sha256"] == "11" * 32
    quantize = by_seq[seqs["quantize"]]
    assert quantize.details["config"]["scheme"] == "int8"
    assert quantize.details["metrics"] == {"int8_modules_quantized": 41}  # the transform's own figures
    assert quantize.details["finished_seq"] == seqs["quantize_done"]
    evaluation = by_seq[seqs["evaluate_done"]]
    assert evaluation.details["metrics"] == {"acc": 0.465, "agreement": 0.98}  # only the int8 variant
    suite = by_seq[seqs["suite"]]
    assert suite.details["passed"] is True and suite.details["suite_sha256"] == SUITE
    assert "passed" in suite.label and SUITE[:12] in suite.label
    assert lin.nodes[-1].label.startswith("not approved")
    assert all(n.run == RUN for n in lin.nodes)
    json.dumps(lin.to_dict())  # serialisable


def test_fp32_chain_stops_before_quantize_and_skips_int8_evaluations(led):
    seqs = _run(led, RUN, suite_passed=True)
    lin = lineage(led, FP32)
    assert [n.kind for n in lin.nodes] == ["run", "data", "model", "step", "step", "artifact", "evaluation",
                                           "approval"]
    assert lin.nodes[5].seq == seqs["fp32"] and lin.nodes[5].details["target"] is True
    assert lin.nodes[6].details["metrics"] == {"acc": 0.47}
    assert lin.nodes[4].details["metrics"] == {"finetune_best_epoch": 1}


def test_non_model_artifact_has_no_evaluations(led):
    _run(led, RUN, suite_passed=True)
    lin = lineage(led, f"{RUN}:predictions")
    kinds = [n.kind for n in lin.nodes]
    assert "suite" not in kinds and "evaluation" not in kinds
    assert kinds[-3:] == ["step", "artifact", "approval"]  # written inside the evaluate step
    assert [n.details.get("name") for n in lin.nodes if n.kind == "artifact"] == ["model:fp32", "model:int8",
                                                                                  "predictions"]


def test_same_bytes_in_another_run_bring_its_suite(led):
    other = _run(led, OTHER, suite_passed=False)
    seqs = _run(led, RUN, suite_passed=True)
    lin = lineage(led, INT8[:10])
    assert lin.artifact["run"] == RUN  # the newest write of these bytes
    tail = [(n.kind, n.run, n.seq) for n in lin.nodes[-6:]]
    assert tail == [("evaluation", RUN, seqs["evaluate_done"]), ("suite", RUN, seqs["suite"]),
                    ("same-artifact", OTHER, other["int8"]), ("evaluation", OTHER, other["evaluate_done"]),
                    ("suite", OTHER, other["suite"]), ("approval", RUN, None)]
    failed = lin.nodes[-2]
    assert failed.details["passed"] is False and "FAILED" in failed.label
    # a different int8 model in another run is not followed
    led2 = Ledger.open(led.location + "2")
    _run(led2, OTHER, suite_passed=False, int8="ee" * 32)
    _run(led2, RUN, suite_passed=True)
    assert "same-artifact" not in [n.kind for n in lineage(led2, f"{RUN}:model:int8").nodes]


def test_file_path_resolves_by_content(led, tmp_path):
    seqs = _run(led, RUN, suite_passed=True)
    f = tmp_path / "copy.safetensors"
    f.write_bytes(b"int8 weights")
    lin = lineage(led, str(f))
    assert lin.artifact["seq"] == seqs["int8"] and lin.artifact["named_by"] == "file"
    f.write_bytes(b"int8 weights, modified")
    with pytest.raises(ConfigError, match="no run in the ledger wrote a file with this content"):
        lineage(led, str(f))


def test_unknown_and_ambiguous(led):
    _run(led, RUN, suite_passed=True)
    with pytest.raises(ConfigError, match="wrote no artifact named 'model:int4'.*model:int8"):
        lineage(led, f"{RUN}:model:int4")
    with pytest.raises(ConfigError, match="no artifact in the ledger has a sha256 starting with"):
        lineage(led, "c0ffee00" * 8)
    with pytest.raises(ConfigError, match="not an existing file"):
        lineage(led, "abc")  # too short for a prefix
    # two artifacts whose sha256 share a prefix: ambiguous, candidates listed
    a, b = "deadbeef" + "0" * 56, "deadbeef" + "1" * 56
    led.append("artifact.written", {"name": "x", "path": "x", "sha256": a, "bytes": 1}, run=RUN)
    led.append("artifact.written", {"name": "y", "path": "y", "sha256": b, "bytes": 1}, run=RUN)
    with pytest.raises(ConfigError, match=r"ambiguous, 2 different artifacts match: .*:x .*:y "):
        lineage(led, "DEADBEEF")
    assert lineage(led, "deadbeef1").artifact["name"] == "y"


def test_config_summary():
    assert config_summary({"train": {"lr": 0.1, "epochs": 2}, "x": None, "l": [1, 2]}) == "l=1,2, train.epochs=2, " \
                                                                                            "train.lr=0.1"
    assert len(config_summary({"k": "v" * 500}, limit=40)) == 40


def test_cli(led, capsys):
    seqs = _run(led, RUN, suite_passed=True)
    assert main(["ledger", "lineage", f"{RUN}:model:int8", "--ledger", led.location, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["artifact"]["seq"] == seqs["int8"] and data["approved"] is False
    assert [n["seq"] for n in data["nodes"]][-3:] == [seqs["evaluate_done"], seqs["suite"], None]
    assert main(["ledger", "lineage", INT8, "--ledger", led.location]) == 0
    text = capsys.readouterr().out
    assert f"#{seqs['suite']}" in text and "not approved" in text and "quickstart on int8: passed" in text
    assert main(["ledger", "lineage", f"{RUN}:nope", "--ledger", led.location]) == 2
    assert "wrote no artifact named 'nope'" in capsys.readouterr().err


def test_base_model_from_another_runs_artifact(led, tmp_path):
    seqs = _run(led, RUN, suite_passed=True)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"int8 weights")
    third = "20261129-000000-aaaaaa"
    loaded = led.append("model.loaded", {"source": {"safetensors": str(weights), "architecture": "toy"}},
                        run=third).seq
    out = led.append("artifact.written", {"name": "model:fp32", "path": "m.safetensors", "sha256": "77" * 32,
                                          "bytes": 1}, run=third).seq
    lin = lineage(led, f"{third}:model:fp32")
    assert [(n.kind, n.run, n.seq) for n in lin.nodes[:3]] == [("artifact", RUN, seqs["int8"]),
                                                               ("model", third, loaded), ("artifact", third, out)]
    assert lin.nodes[1].details["sha256"] == INT8
    used = [n for n in lineage(led, INT8).nodes if n.kind == "used-by"]
    assert [(n.run, n.seq) for n in used] == [(third, loaded)]


def test_promotion_and_revocation_of_the_same_bytes_are_the_approval(led):
    _run(led, RUN, suite_passed=True)
    staging = led.append("model.promoted", {"stage": "staging", "variant": "int8", "weights_sha256": INT8,
                                            "approver": "ann"}, run=RUN).seq
    production = led.append("model.promoted", {"stage": "production", "variant": "int8", "weights_sha256": INT8,
                                               "approver": "ann"}, run=RUN).seq
    lin = lineage(led, INT8)
    assert lin.approved and lin.nodes[-1].kind == "approval" and "ann" in lin.nodes[-1].label
    led.append("model.revoked", {"promotion_seq": production, "weights_sha256": INT8, "approver": "bob",
                                 "reason": "drift"}, run=RUN)
    lin = lineage(led, INT8)
    assert lin.approved  # the staging promotion still stands (the newest event used to decide alone)
    assert "revoked by bob: drift" in lin.nodes[-1].label
    led.append("model.revoked", {"promotion_seq": staging, "weights_sha256": INT8, "approver": "bob",
                                 "reason": "drift"}, run=RUN)
    lin = lineage(led, INT8)
    assert not lin.approved and [n.kind for n in lin.nodes[-3:]] == ["approval"] * 3
