"""Regression suites on real runs: `nnforge evaluate` (exit codes, JUnit, ledger, report) and the `gate` step."""

from __future__ import annotations

import json
import shutil
import sqlite3
import xml.etree.ElementTree as ET

import pytest

from nnforge.cli import main

pytestmark = pytest.mark.slow

SUITE = """
name: small
reference: fp32
slices: [class, {meta: play}]
checks:
  - accuracy >= 0.05
  - name: agrees with fp32
    check: flip_rate <= 0.10
  - slice:class:history accuracy >= 0.0
  - size_mb <= 100
"""


@pytest.fixture
def run_copy(small_run, tmp_path):
    """A copy of the small run, with copies of its ledger as tmp_path/ledger.db and tmp_path/l.db."""
    folder, run_dir = small_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in ("ledger.db", "l.db"):  # through SQLite's backup API: recent events may still be in the WAL file
        src, dst = sqlite3.connect(folder / ".nnforge" / "ledger.db"), sqlite3.connect(tmp_path / name)
        src.backup(dst)
        src.close(), dst.close()
    (tmp_path / "small.yaml").write_text(SUITE)
    return copy


def test_evaluate_passes_records_and_reports(run_copy, tmp_path, capsys):
    led = tmp_path / "ledger.db"
    rc = main(["evaluate", str(run_copy), "--suite", str(tmp_path / "small.yaml"), "--variant", "int8",
               "--ledger", str(led), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["passed"] and len(out["checks"]) == 4
    flip = next(c for c in out["checks"] if c["name"] == "agrees with fp32")
    assert 0 <= flip["value"] <= 0.10 and flip["interval"]["low"] <= flip["value"] <= flip["interval"]["high"]
    root = ET.parse(run_copy / "suite-small.junit.xml").getroot()
    assert root.get("failures") == "0" and len(root.findall(".//testcase")) == 4
    assert "suite small" in (run_copy / "report.html").read_text()
    assert main(["ledger", "show", "--ledger", str(led), "--json", "--limit", "0"]) == 0
    events = json.loads(capsys.readouterr().out)
    ev = next(e for e in events if e["kind"] == "suite.evaluated" and e["data"]["suite"] == "small")
    import hashlib

    assert ev["data"]["suite_sha256"] == hashlib.sha256((tmp_path / "small.yaml").read_bytes()).hexdigest()


def test_the_native_runtime_is_judged_as_a_variant_of_its_own(run_copy, tmp_path, capsys):
    from nnforge.deploy.native.encoder import _library

    if _library(None)[0] is None:
        pytest.skip("the native runtime is not built here")
    led = tmp_path / "ledger.db"
    rc = main(["evaluate", str(run_copy), "--suite", str(tmp_path / "small.yaml"), "--variant", "int8-native",
               "--ledger", str(led), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["passed"]
    size = next(c for c in out["checks"] if c["name"].startswith("size_mb"))
    assert 0 < size["value"] < 100  # the int8 weights file
    assert json.loads((run_copy / "suite-small@int8-native.json").read_text())["variant"] == "int8-native"
    assert main(["evaluate", str(run_copy), "--suite", str(tmp_path / "small.yaml"), "--variant", "fp32-native",
                 "--ledger", str(led)]) == 2
    assert "fp32-native" in capsys.readouterr().err


def test_failing_suite_exits_1_and_junit_names_the_check(run_copy, tmp_path, capsys):
    (tmp_path / "strict.yaml").write_text(SUITE.replace("name: small", "name: strict")
                                          .replace("accuracy >= 0.05", "accuracy >= 0.999"))
    rc = main(["evaluate", str(run_copy), "--suite", str(tmp_path / "strict.yaml"), "--ledger", str(tmp_path / "l.db")])
    assert rc == 1
    assert "accuracy >= 0.999" in capsys.readouterr().err
    failures = ET.parse(run_copy / "suite-strict.junit.xml").getroot().findall(".//failure")
    assert len(failures) == 1 and failures[0].get("message").startswith("accuracy >= 0.999")


@pytest.mark.parametrize("args, message", [
    (["--suite", "no-such-suite"], "not a built-in suite"),
    (["--suite", "SUITE", "--baseline", "runs/nope"], "not a run folder"),
    (["--suite", "SUITE", "--variant", "int3"], "no variant 'int3'"),
])
def test_bad_input_is_refused_before_any_model_runs(run_copy, tmp_path, capsys, args, message):
    args = [str(tmp_path / "small.yaml") if a == "SUITE" else a for a in args]
    assert main(["evaluate", str(run_copy), *args, "--ledger", str(tmp_path / "l.db")]) == 2
    assert message in capsys.readouterr().err
    assert not (run_copy / "suite-small.json").exists()


@pytest.mark.parametrize("edit, message", [
    (("reference: fp32", "reference: int3"), "reference variant 'int3' is not in this run"),
    (("reference: fp32\n", ""), "names no reference variant"),
    (("accuracy >= 0.05", "accuracy >= baseline - 0.01"), "give one (--baseline RUN)"),
    (("name: small", "name: small\nsplit: holdout"), "split 'holdout'"),
])
def test_a_suite_that_does_not_fit_the_run_is_refused_before_any_model_runs(run_copy, tmp_path, capsys, edit,
                                                                            message):
    (tmp_path / "misfit.yaml").write_text(SUITE.replace(*edit))
    assert main(["evaluate", str(run_copy), "--suite", str(tmp_path / "misfit.yaml"), "--ledger",
                 str(tmp_path / "l.db")]) == 2
    assert message in capsys.readouterr().err
    assert not (run_copy / "suite-small.json").exists()


def test_unknown_slice_and_wrong_class_count_are_named(run_copy, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(SUITE.replace("slice:class:history", "slice:class:romance"))
    assert main(["evaluate", str(run_copy), "--suite", str(tmp_path / "bad.yaml"), "--ledger", str(tmp_path / "l.db")]) == 2
    assert "unknown slice 'class:romance'" in capsys.readouterr().err
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["label_names"] = ["comedy", "tragedy"]
    (run_copy / "config.json").write_text(json.dumps(cfg))
    assert main(["evaluate", str(run_copy), "--suite", str(tmp_path / "small.yaml"), "--ledger", str(tmp_path / "l.db")]) == 2
    assert "classes" in capsys.readouterr().err


def test_damaged_variant_fails_the_suite_the_fp32_model_passes(small_run):
    """2-bit RTN (per channel, no calibration) damages the model: the flip-rate check must name it."""
    import pathlib
    import tempfile

    from nnforge.compress import quantize_
    from nnforge.compress.quantize import Int2WeightOnlyConfig
    from nnforge.evaluate import load_suite, run_suite
    from nnforge.recipes import load_run
    from nnforge.recipes.suites import SuiteTarget, gather_inputs, run_data

    _, run_dir = small_run
    run = load_run(run_dir)
    fp32 = run.model("fp32")
    import copy

    damaged = copy.deepcopy(fp32)
    quantize_(damaged, Int2WeightOnlyConfig(group_size=None, calibrator="rtn"))
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "small.yaml"
        path.write_text(SUITE)
        suite = load_suite(path)
    target = SuiteTarget({"fp32": fp32, "int2": damaged}, {"fp32": run_dir / "model.safetensors",
                                                           "int2": run_dir / "model.safetensors"},
                         run_data(run.config, "test"), run.label_names)
    good = run_suite(suite, gather_inputs(suite, target, "fp32"))
    bad = run_suite(suite, gather_inputs(suite, target, "int2"))
    assert good.passed
    assert not bad.passed and "agrees with fp32" in [c.spec.name for c in bad.failed]


def test_relative_check_against_a_baseline_run(run_copy, small_run, tmp_path, capsys):
    """The run judged against its own original folder: zero difference, an interval around it, a pass."""
    _, original = small_run
    (tmp_path / "rel.yaml").write_text("name: rel\nslices: [class]\nchecks:\n"
                                       "  - accuracy >= baseline - 0.01\n  - slice:class:comedy macro_f1 >= baseline\n")
    rc = main(["evaluate", str(run_copy), "--suite", str(tmp_path / "rel.yaml"), "--baseline", str(original),
               "--baseline-variant", "int8", "--variant", "int8", "--ledger", str(tmp_path / "l.db"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["passed"]
    acc = out["checks"][0]
    assert acc["difference"]["estimate"] == 0 and acc["mcnemar"]["p_value"] == 1.0 and acc["other_value"] == acc["value"]


def test_the_suite_gate_benchmark_judges_a_run_as_a_user_would(small_run_copy):
    """benchmarks/evaluate/suite_gate.py's judge: exit code, failed checks and JUnit failures agree (it once
    passed a ledger that had not recorded the run, was refused with exit 2 and died reading empty JSON)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "evaluate" / "suite_gate.py"
    spec = importlib.util.spec_from_file_location("suite_gate_benchmark", script)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _, run_dir = small_run_copy
    result = bench.judge(run_dir, "int8")
    assert result["exit_code"] == (1 if result["failed"] else 0)
    assert len(result["junit_failures"]) == len(result["failed"])
    assert {c["name"] for c in result["checks"] if c["verdict"] == "fail"} == set(result["failed"])
