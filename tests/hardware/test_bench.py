"""The benchmark harness: interleaved rounds, cold copies from the L3 it is given, ratio intervals that cover
the truth, a results schema that refuses bare ratios, smoke runs that write nothing, tags that spare the main file."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnforge.errors import ConfigError
from nnforge.hardware import (
    _machine,
    cold_copies,
    interleave,
    machine_facts,
    provenance,
    ratio_ci,
    ratio_with_ci,
    results_path,
    speed_verdict,
    spread,
    validate_results,
    write_results,
)

SCRIPT = Path(__file__)


def test_ratio_ci_covers_the_true_ratio_on_synthetic_timings():
    # lognormal timings with true medians 10 ms and 4 ms: the true ratio of medians is 2.5
    covered, widths = 0, []
    for trial in range(40):
        rng = np.random.default_rng(trial)
        slow = 10 * np.exp(rng.normal(0, 0.2, 30))
        fast = 4 * np.exp(rng.normal(0, 0.2, 30))
        lo, hi = ratio_ci(slow.tolist(), fast.tolist(), n_boot=400, seed=trial)
        covered += lo <= 2.5 <= hi
        widths.append(hi - lo)
    assert covered >= 34  # nominal 95% of 40 = 38; the percentile bootstrap of a median runs a little short
    assert 0.05 < statistics.median(widths) < 1.0  # an interval, not a point and not the whole line


def test_ratio_ci_is_speed_verdicts_interval():
    rng = random.Random(3)
    ours = [rng.uniform(1.0, 1.4) for _ in range(20)]
    base = [rng.uniform(2.0, 2.8) for _ in range(20)]
    assert ratio_ci(base, ours, seed=5) == tuple(speed_verdict(ours, base, seed=5)["speedup_ci"])


def test_ratio_with_ci_contains_its_ratio_and_refuses_empty_samples():
    ratio, (lo, hi) = ratio_with_ci([4.0, 4.2, 3.9, 4.1], [2.0, 2.1, 1.9, 2.05])
    assert ratio == pytest.approx(statistics.median([4.0, 4.2, 3.9, 4.1]) / statistics.median([2.0, 2.1, 1.9, 2.05]))
    assert lo <= ratio <= hi
    with pytest.raises(ConfigError, match="empty"):
        ratio_ci([], [1.0])


def test_cold_copies_streams_more_than_twice_the_l3_it_is_given():
    mib = 2**20
    assert cold_copies(180 * mib, l3_bytes=32 * mib) == 1  # one 180 MiB operand already exceeds 64 MiB
    assert cold_copies(8 * mib, l3_bytes=32 * mib) == 9  # 8 * 8 MiB = 64 MiB is not *more* than twice
    n = cold_copies(180 * 10**6, l3_bytes=480 * 10**6)
    assert n == 6 and n * 180e6 > 960e6 and (n - 1) * 180e6 <= 960e6
    with pytest.raises(ConfigError):
        cold_copies(0, l3_bytes=32 * mib)


def test_cold_copies_reads_the_machine_and_falls_back_to_512_mib(monkeypatch):
    monkeypatch.setattr("nnforge.hardware._bench.l3_cache_bytes", lambda: (64 * 2**20, "sysfs"))
    assert cold_copies(2**20) == 129
    monkeypatch.setattr("nnforge.hardware._bench.l3_cache_bytes", lambda: (None, None))
    assert cold_copies(2**20) == 1025


def test_l3_sizes_parse_as_sysfs_and_lscpu_write_them(monkeypatch):
    assert _machine._parse_size("32768K") == 32 * 2**20
    assert _machine._parse_size("480 MiB") == 480 * 2**20
    assert _machine._parse_size("33554432") == 33554432
    assert _machine._parse_size("n/a") is None
    monkeypatch.setattr(_machine, "_run", lambda cmd: "L2 cache: 1048576 (2 instances)\nL3 cache: 67108864 (2 instances)\n")
    assert _machine._l3_from_lscpu() == 32 * 2**20  # lscpu sums instances; one L3 is what a core sees


def test_machine_facts_carry_l3_threads_and_load():
    facts = machine_facts()
    for key in ("l3_cache_mb", "threads", "load_average", "cpu_flags"):
        assert key in facts
    size, _ = _machine.l3_cache_bytes()
    assert facts["l3_cache_mb"] == (round(size / 1e6, 3) if size else None)
    assert facts["threads"] >= 1


def test_machine_facts_record_the_l3_assumed_when_it_cannot_be_read(monkeypatch):
    monkeypatch.setattr(_machine, "l3_cache_bytes", lambda: (None, None))
    facts = _machine.machine_facts()
    assert facts["l3_cache_mb"] is None and facts["l3_assumed_for_cold_mb"] == 536.871


def test_interleave_times_every_callable_each_round_in_shuffled_orders():
    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
    samples = interleave(fns, rounds=6, warmup=2, seed=1)
    assert {k: len(v) for k, v in samples.items()} == dict.fromkeys("abcd", 6)
    assert all(x >= 0 for v in samples.values() for x in v)
    timed = calls[8:]  # after 2 warm-up rounds of 4
    rounds = [timed[i:i + 4] for i in range(0, len(timed), 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order changes between rounds


def test_interleave_stops_at_its_budget_but_after_three_rounds():
    samples = interleave({"a": lambda: None, "b": lambda: None}, rounds=1000, round_budget_s=0.0)
    assert len(samples["a"]) == 3
    calls = []
    interleave({"a": lambda: calls.append(1)}, rounds=2, calls_per_round=5, warmup=0)
    assert len(calls) == 10
    with pytest.raises(ConfigError, match="rounds"):
        interleave({"a": lambda: None}, rounds=0)


def test_spread_accepts_zeros():
    assert spread([0.0, 1.0, 0.5])["median"] == 0.5


def test_provenance_names_commit_dirty_hash_and_argv():
    p = provenance(SCRIPT, ["x.py", "--quick"])
    assert set(p) == {"commit", "dirty", "script_sha256", "argv"} | ({"dirty_files"} if p["dirty"] else set())
    import hashlib

    assert p["script_sha256"] == hashlib.sha256(SCRIPT.read_bytes()).hexdigest()
    assert p["argv"] == ["x.py", "--quick"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SCRIPT.parent, capture_output=True, text=True, timeout=60)
    assert p["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert isinstance(p["dirty"], bool) or p["commit"] is None


def test_a_dirty_tree_names_its_changed_files(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, timeout=60)

    git("init", "-q")
    (tmp_path / "b.py").write_text("print(1)\n")
    (tmp_path / "other.json").write_text("{}\n")
    git("add", "b.py", "other.json")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    clean = provenance(tmp_path / "b.py", [])
    assert clean["dirty"] is False and "dirty_files" not in clean
    (tmp_path / "other.json").write_text('{"a": 1}\n')  # e.g. another benchmark's fresh results
    (tmp_path / "new.txt").write_text("untracked files do not count\n")
    dirty = provenance(tmp_path / "b.py", [])
    assert dirty["dirty"] is True and dirty["dirty_files"] == ["other.json"]


def test_provenance_outside_git_has_no_commit(tmp_path):
    script = tmp_path / "b.py"
    script.write_text("print(1)\n")
    p = provenance(script, [])
    assert p["commit"] is None and p["dirty"] is None and len(p["script_sha256"]) == 64


def _write(tmp_path, **kw):
    args = {"mode": "full", "results": {"rows": [1, 2]}, "summary": {"x_ms": 1.0}, "script": SCRIPT, "argv": ["b"]}
    args.update(kw)
    return write_results(tmp_path, "area", "bench", **args)


def test_schema_refuses_a_speedup_without_its_interval(tmp_path):
    with pytest.raises(ConfigError, match="int4_speedup_11008 is a ratio without an interval"):
        _write(tmp_path, summary={"int4_speedup_11008": 5.4})
    with pytest.raises(ConfigError, match="outside its interval"):
        _write(tmp_path, summary={"int4_speedup": 5.4, "int4_speedup_ci": [5.5, 5.9]})
    with pytest.raises(ConfigError, match="size_ratio"):
        _write(tmp_path, summary={"nested": {"size_ratio": 0.25}})
    assert not list(tmp_path.iterdir())  # nothing written on refusal
    ok = _write(tmp_path, summary={"int4_speedup_warm": 5.4, "int4_speedup_warm_ci": [5.1, 5.6],
                                   "best_peer_int2_speedup_11008": None, "size_ratio": 0.25},
                no_ci={"size_ratio": "sizes are exact, not sampled"})
    doc = json.loads(ok.read_text())
    assert doc["no_ci"] == {"size_ratio": "sizes are exact, not sampled"}
    assert doc["summary"]["int4_speedup_warm_ci"] == [5.1, 5.6]


def test_schema_refuses_percentages_nan_and_objects(tmp_path):
    with pytest.raises(ConfigError, match="fraction"):
        _write(tmp_path, summary={"fp32_acc": 47.0})
    with pytest.raises(ConfigError, match="null"):
        _write(tmp_path, summary={"loss": float("nan")})
    with pytest.raises(ConfigError, match="JSON cannot hold"):
        _write(tmp_path, results={"model": object()})
    with pytest.raises(ConfigError, match=r"results.by_order: key \(1, 2\) is not a string"):
        _write(tmp_path, results={"by_order": {(1, 2): 0.5}})
    path = _write(tmp_path, summary={"n": np.int64(3), "acc_val": np.float32(0.5)}, results={"by_order": {1: 2.0}})
    doc = json.loads(path.read_text())
    assert doc["summary"] == {"n": 3, "acc_val": 0.5} and doc["results"] == {"by_order": {"1": 2.0}}


def test_results_file_has_provenance_machine_and_peers(tmp_path):
    path = _write(tmp_path, peers={"ort-int8": {"per_channel": True}}, packages=("onnxruntime",),
                  extra={"note": "n"})
    doc = json.loads(path.read_text())
    assert path == tmp_path / "area_bench.json"
    assert set(doc) >= {"mode", "benchmark", "date", "provenance", "machine", "versions", "peers", "results",
                        "summary", "note"}
    assert doc["peers"] == {"ort-int8": {"per_channel": True}} and "onnxruntime" in doc["versions"]
    assert doc["provenance"]["argv"] == ["b"] and "l3_cache_mb" in doc["machine"]
    validate_results(doc)
    del doc["provenance"]["commit"]
    with pytest.raises(ConfigError, match="provenance lacks 'commit'"):
        validate_results(doc)


def test_smoke_mode_checks_and_writes_nothing(tmp_path):
    assert _write(tmp_path, mode="smoke") is None
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError):
        _write(tmp_path, mode="smoke", summary={"speedup": 2.0})


def test_a_tagged_run_never_touches_the_main_file(tmp_path):
    main = _write(tmp_path, summary={"x_ms": 1.0})
    before = main.read_bytes()
    tagged = _write(tmp_path, summary={"x_ms": 2.0}, tag="only-sgd")
    quick = _write(tmp_path, summary={"x_ms": 3.0}, tag="only-sgd", mode="quick")
    assert tagged == tmp_path / "area_bench_only-sgd.json" and quick == tmp_path / "area_bench_only-sgd.quick.json"
    assert main.read_bytes() == before
    assert json.loads(tagged.read_text())["tag"] == "only-sgd"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["area_bench.json", "area_bench_only-sgd.json",
                                                          "area_bench_only-sgd.quick.json"]
    with pytest.raises(ConfigError, match="names a file"):
        results_path(tmp_path, "area", "bench", "full", tag="../evil")


def test_extra_cannot_overwrite_the_files_own_keys(tmp_path):
    with pytest.raises(ConfigError, match="overwrite"):
        _write(tmp_path, extra={"provenance": {}})


def test_import_of_the_harness_stays_cheap():
    code = "import sys, nnforge.hardware; print(sorted(m for m in ('transformers', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_provenance_is_the_start_of_the_run_and_a_moved_tree_is_recorded(tmp_path):
    script = tmp_path / "b.py"
    script.write_text("print(1)\n")
    started = provenance(script, ["b.py"])
    script.write_text("print(2)\n")  # the script changed while the run ran
    doc = json.loads(write_results(tmp_path, "area", "bench", mode="full", results={}, summary={}, script=script,
                                   argv=["b.py"], started=started).read_text())
    assert doc["provenance"]["script_sha256"] == started["script_sha256"]
    assert doc["provenance"]["script_sha256_at_write"] != started["script_sha256"]
    same = json.loads(write_results(tmp_path, "area", "same", mode="full", results={}, summary={}, script=script,
                                    argv=["b.py"], started=provenance(script, ["b.py"])).read_text())
    assert set(same["provenance"]) == {"commit", "dirty", "script_sha256", "argv"}
