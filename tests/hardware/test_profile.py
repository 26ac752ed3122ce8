"""Timing statistics: quantiles inside the data, argument checks, an honest "is it faster?" verdict."""

from __future__ import annotations

import random
import time

import pytest
import torch

from nnforge.hardware import compare, profile, speed_verdict, time_verdict
from nnforge.hardware._profile import _summarise


def test_p95_and_iqr_stay_within_the_samples():
    p = _summarise([1.0, 2.0, 3.0, 10.0], {})
    assert p.p95_ms <= 10.0  # 15.25 with the extrapolating "exclusive" method
    assert p.iqr_ms == pytest.approx(4.75 - 1.75)
    assert _summarise([5.0] * 9 + [50.0], {}).p95_ms <= 50.0


@pytest.mark.parametrize("kw", [{"repeats": 0}, {"warmup": -1}, {"repeats": -3}])
def test_compare_checks_its_counts_as_profile_does(kw):
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        compare({"a": lambda: None}, **kw)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        profile(lambda: None, **kw)


def test_profile_runs_under_inference_mode_unless_asked_not_to():
    seen = []
    profile(lambda: seen.append(torch.is_inference_mode_enabled()), warmup=0, repeats=1)
    profile(lambda: seen.append(torch.is_inference_mode_enabled()), warmup=0, repeats=1, inference_mode=False)
    assert seen == [True, False]


def test_compare_alternates_the_order_of_its_rounds():
    order = []
    compare({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=0, repeats=4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_identical_timings_are_not_significant():
    rng = random.Random(0)
    verdicts = []
    for _ in range(50):  # the same distribution: a bare median comparison said "faster" about half the time
        a = [rng.lognormvariate(0, 0.3) for _ in range(30)]
        b = [rng.lognormvariate(0, 0.3) for _ in range(30)]
        verdicts.append(speed_verdict(a, b)["verdict"])
    assert verdicts.count("not significant") >= 44  # about 5% false alarms at alpha 0.05


def test_a_clear_difference_is_faster_or_slower_with_an_interval():
    rng = random.Random(1)
    fast = [rng.gauss(1.0, 0.05) for _ in range(20)]
    slow = [rng.gauss(2.0, 0.05) for _ in range(20)]
    v = speed_verdict(fast, slow)
    assert v["verdict"] == "faster" and v["p_value"] < 1e-3
    lo, hi = v["speedup_ci"]
    assert 1 < lo <= v["speedup"] <= hi
    assert speed_verdict(slow, fast)["verdict"] == "slower"
    assert speed_verdict(fast[:3], slow[:3])["verdict"] == "not significant"  # three samples prove nothing


def test_time_verdict_on_callables():
    v = time_verdict(lambda: None, lambda: time.sleep(0.002), warmup=1, repeats=8)
    assert v["verdict"] == "faster" and v["baseline_ms"] > v["candidate_ms"]
