"""Metrics, slices, statistical tests and regression suites on synthetic outputs (fast, seeded)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from nnforge.errors import ConfigError, DataError
from nnforge.evaluate import (
    METRICS,
    Outputs,
    Suite,
    SuiteInputs,
    bootstrap_interval,
    build_slices,
    load_suite,
    mcnemar,
    run_suite,
    slice_table,
    write_junit,
)
from nnforge.evaluate.metrics import auroc


def _outputs(n: int = 400, acc: float = 0.8, seed: int = 0, flip: float = 0.0, base: Outputs | None = None) -> Outputs:
    """3-class outputs whose predictions are right with probability ``acc``; ``flip`` re-draws a share of them."""
    rng = np.random.default_rng(seed)
    labels = base.labels if base is not None else rng.integers(0, 3, n)
    if base is not None:
        preds = base.preds.copy()
        change = rng.random(len(labels)) < flip
        preds[change] = (preds[change] + rng.integers(1, 3, int(change.sum()))) % 3
    else:
        right = rng.random(n) < acc
        preds = np.where(right, labels, (labels + rng.integers(1, 3, n)) % 3)
    probs = np.full((len(labels), 3), 0.15)
    probs[np.arange(len(labels)), preds] = 0.7
    meta = [{"play": ["a", "b", "c", "d"][i % 4]} for i in range(len(labels))]
    texts = [("word " * (5 + i % 20)).strip() for i in range(len(labels))]
    return Outputs(labels, probs, meta, texts, ["comedy", "tragedy", "history"])


def test_metrics_match_definitions():
    out = _outputs()
    assert METRICS.get("accuracy")(out) == pytest.approx(float((out.preds == out.labels).mean()))
    assert METRICS.get("nll")(out) == pytest.approx(float(-np.log(out.probs[np.arange(len(out)), out.labels]).mean()))
    assert METRICS.get("perplexity")(out) == pytest.approx(math.exp(METRICS.get("nll")(out)))
    assert 0 <= METRICS.get("ece")(out) <= 1 and 0 <= METRICS.get("brier")(out) <= 2
    same = METRICS.get("flip_rate")(out, out)
    assert same == 0 and METRICS.get("agreement")(out, out) == 1
    with pytest.raises(DataError, match="reference"):
        METRICS.get("flip_rate")(out)


def test_auroc_matches_sklearn_including_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding makes ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    p = rng.dirichlet(np.ones(3), 300)
    y3 = rng.integers(0, 3, 300)
    assert auroc(y3, p) == pytest.approx(roc_auc_score(y3, p, multi_class="ovr"))


@pytest.mark.parametrize(("labels", "scores", "message"), [
    ([-1, 1, 1, -1], [0.1, 0.2, 0.3, 0.4], "labels must be 0 and 1"),  # gave 4.65 before
    ([1, 2, 2, 1], [0.1, 0.2, 0.3, 0.4], "labels must be 0 and 1"),    # gave the inverted 1 - AUROC
    ([0, 1, 0, 1], [0.1, float("nan"), 0.3, 0.9], "NaN"),
    ([0, 1, 3], [[0.5, 0.3, 0.2]] * 3, "labels must be 0..2"),
    ([0, 1], [0.1, 0.2, 0.3], "expected"),
])
def test_auroc_refuses_labels_and_scores_it_cannot_rank(labels, scores, message):
    with pytest.raises(DataError, match=message):
        auroc(np.array(labels), np.array(scores))


def test_outputs_reject_mismatches():
    with pytest.raises(DataError, match="whole numbers"):
        Outputs(np.array([0.7, 1.9]), np.full((2, 3), 1 / 3))  # was silently truncated to [0, 1]
    assert Outputs(np.array([0.0, 2.0]), np.full((2, 3), 1 / 3)).labels.tolist() == [0, 2]
    with pytest.raises(DataError, match="labels must be in"):
        Outputs(np.array([0, 3]), np.full((2, 3), 1 / 3))
    with pytest.raises(DataError, match="label names"):
        Outputs(np.array([0, 1]), np.full((2, 3), 1 / 3), label_names=["a", "b"])


def test_slices_by_class_meta_and_predicate_with_rare_flags():
    out = _outputs(n=100)
    slices = build_slices(out, ["class", {"meta": "play"}, {"name": "long", "where": "words >= 20 and meta.play in [a, b]"}],
                          rare_below=30)
    assert {"all", "class:comedy", "class:tragedy", "class:history", "play:a", "play:d", "long"} <= set(slices)
    assert sum(len(slices[f"play:{p}"].index) for p in "abcd") == 100
    long_idx = slices["long"].index
    assert all(len(out.texts[i].split()) >= 20 and out.meta[i]["play"] in "ab" for i in long_idx)
    assert slices["long"].rare and not slices["all"].rare
    rows = slice_table(out, slices, ["accuracy", "macro_f1"])
    assert rows[0]["slice"] == "all" and rows[0]["n"] == 100
    with pytest.raises(DataError, match="no example has metadata field 'author'"):
        build_slices(out, [{"meta": "author"}])
    with pytest.raises(ConfigError, match="cannot read the condition"):
        build_slices(out, [{"name": "x", "where": "__import__('os') == 1"}])


def test_cos_fidelity_reads_the_embeddings_and_refuses_mismatches():
    base = _outputs(n=50)
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(50, 8))
    out = Outputs(base.labels, base.probs, features=feats)
    assert METRICS.get("cos_fidelity")(out, out) == pytest.approx(1.0)
    noisy = Outputs(base.labels, base.probs, features=feats + rng.normal(scale=0.5, size=feats.shape))
    expected = np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(noisy.features, feats, strict=True)])
    assert METRICS.get("cos_fidelity")(noisy, out) == pytest.approx(expected)
    with pytest.raises(DataError, match="one shape"):
        METRICS.get("cos_fidelity")(Outputs(base.labels, base.probs, features=feats[:, :4]), out)
    with pytest.raises(DataError, match="needs embeddings"):
        METRICS.get("cos_fidelity")(base, out)
    with pytest.raises(DataError, match="features must be"):
        Outputs(base.labels, base.probs, features=feats[:10])
    with pytest.raises(DataError, match="NaN or infinite features"):
        Outputs(base.labels, base.probs, features=np.full((50, 8), np.nan))
    with pytest.raises(DataError, match="measured"):
        METRICS.get("latency_ms")(out)


def test_metrics_of_an_empty_split_are_nan():
    empty = Outputs(np.zeros(0, dtype=np.int64), np.zeros((0, 3)))
    for name in ("accuracy", "macro_f1", "nll", "perplexity", "brier", "ece"):
        assert math.isnan(METRICS.get(name)(empty)), name
    assert math.isnan(METRICS.get("flip_rate")(empty, empty))


@pytest.mark.parametrize(("spec", "error", "message"), [
    ({"name": "a b", "where": "words > 3"}, ConfigError, "may hold only"),
    ({"name": "x"}, ConfigError, "a slice is 'class'"),
    ({"meta": ""}, ConfigError, "a slice is 'class'"),
    ({"name": "x", "where": "words >= 3 or chars < 2"}, ConfigError, "cannot read the condition"),
    ({"name": "x", "where": "label > comedy"}, DataError, "ordering applies to numbers only"),
])
def test_slice_specs_name_what_is_wrong(spec, error, message):
    with pytest.raises(error, match=message):
        build_slices(_outputs(n=20), [spec])


def test_slice_conditions_on_labels_predictions_confidence_and_text_length():
    out = _outputs(n=60)
    slices = build_slices(out, [{"name": "wrong", "where": "label != pred"},
                                {"name": "sure-history", "where": "pred == history and confidence >= 0.7"},
                                {"name": "short", "where": "chars < 30"},
                                {"name": "quoted", "where": "meta.play == 'c'"}])
    assert set(slices["wrong"].index) == set(np.flatnonzero(out.preds != out.labels))
    assert set(slices["sure-history"].index) == set(np.flatnonzero(out.preds == 2))
    assert set(slices["short"].index) == {i for i, t in enumerate(out.texts) if len(t) < 30}
    assert set(slices["quoted"].index) == set(range(2, 60, 4))
    assert len(build_slices(out, [{"name": "lit", "where": "label == 'pred'"}])["lit"].index) == 0  # quoted: a string
    with pytest.raises(ConfigError, match="two slices are named 'short'"):
        build_slices(out, [{"name": "short", "where": "chars < 30"}, {"name": "short", "where": "words < 3"}])
    with pytest.raises(DataError, match="needs texts"):
        build_slices(Outputs(out.labels, out.probs), [{"name": "short", "where": "chars < 30"}])


def test_bootstrap_interval_covers_the_truth_and_mcnemar_is_exact():
    rng = np.random.default_rng(0)
    x = rng.random(2000) < 0.7
    iv = bootstrap_interval(lambda i: float(x[i].mean()), len(x), resamples=500)
    assert iv.low < 0.7 < iv.high and iv.high - iv.low < 0.06
    # 10 discordant pairs split 9:1 → two-sided exact p = 2 * (1 + 10) / 1024
    a = np.array([1] * 9 + [0] * 1 + [1] * 50, dtype=bool)
    b = np.array([0] * 9 + [1] * 1 + [1] * 50, dtype=bool)
    assert mcnemar(a, b)["p_value"] == pytest.approx(22 / 1024)
    assert mcnemar(a, a)["p_value"] == 1.0


def _suite(*checks, **kw) -> Suite:
    return Suite(name="t", checks=list(checks), slices=kw.pop("slices", ["class", {"meta": "play"}]), resamples=300, **kw)


def test_suite_validation_names_what_is_wrong():
    with pytest.raises(ConfigError, match="did you mean 'accuracy'"):
        _suite("acuracy >= 0.5")
    with pytest.raises(ConfigError, match="right-hand side"):
        _suite("accuracy >= best")
    with pytest.raises(ConfigError, match="unknown slice 'class:romance'"):
        run_suite(_suite("slice:class:romance accuracy >= 0.5"), SuiteInputs(_outputs()))
    with pytest.raises(DataError, match="needs reference"):
        run_suite(_suite("flip_rate <= 0.1"), SuiteInputs(_outputs()))
    with pytest.raises(ConfigError, match="text perturbation"):
        _suite("accuracy:char_swapp >= 0.5")


def test_absolute_checks_pass_and_fail_with_intervals():
    out = _outputs(acc=0.8)
    res = run_suite(_suite("accuracy >= 0.7", "accuracy >= 0.9", "slice:play:a accuracy >= 0.5"), SuiteInputs(out))
    verdicts = [c.verdict for c in res.checks]
    assert verdicts == ["pass", "fail", "pass"] and not res.passed
    c = res.checks[0]
    assert c.interval is not None and c.interval.low < c.value < c.interval.high
    assert [f.spec.text for f in res.failed] == ["accuracy >= 0.9"]


def test_relative_checks_use_the_paired_test():
    base = _outputs(acc=0.8, seed=0)
    probs = base.probs.copy()  # 4 right answers turned wrong, 3 wrong ones turned right: not a significant loss
    right, wrong = np.flatnonzero(base.correct == 1)[:4], np.flatnonzero(base.correct == 0)[:3]
    probs[right] = np.roll(probs[right], 1, axis=1)
    probs[wrong] = np.eye(3)[base.labels[wrong]] * 0.55 + 0.15
    same_ish = Outputs(base.labels, probs, base.meta, base.texts, base.label_names)
    worse = Outputs(base.labels, np.roll(base.probs, 1, axis=1), base.meta, base.texts, base.label_names)
    check = "accuracy >= baseline - 0.01"
    ok = run_suite(_suite(check), SuiteInputs(same_ish, baseline=base)).checks[0]
    bad = run_suite(_suite(check), SuiteInputs(worse, baseline=base)).checks[0]
    assert ok.passed and ok.difference is not None and ok.difference.estimate == pytest.approx(-1 / len(base))
    assert not bad.passed and bad.verdict == "fail" and bad.mcnemar is not None and bad.mcnemar["p_value"] < 1e-6
    point = run_suite(_suite(check, decide="point"), SuiteInputs(same_ish, baseline=base)).checks[0]
    assert point.passed == (point.difference.estimate >= -0.01)
    with pytest.raises(DataError, match="different examples"):
        run_suite(_suite(check), SuiteInputs(_outputs(n=50), baseline=base))
    # AUROC on a one-class slice is undefined: the check measured nothing, so it cannot pass
    undefined = run_suite(_suite("slice:class:comedy auroc >= baseline - 0.01"),
                          SuiteInputs(same_ish, baseline=base)).checks[0]
    assert not undefined.passed and "undefined" in undefined.message


def test_flip_rate_against_the_reference_and_junit(tmp_path):
    ref = _outputs()
    damaged = _outputs(flip=0.3, base=ref, seed=3)
    suite = _suite("accuracy >= 0.5", {"name": "agrees with fp32", "check": "flip_rate <= 0.05"}, reference="fp32")
    good = run_suite(suite, SuiteInputs(ref, reference=ref))
    bad = run_suite(suite, SuiteInputs(damaged, reference=ref))
    assert good.passed and not bad.passed and [c.spec.name for c in bad.failed] == ["agrees with fp32"]
    path = write_junit(bad, tmp_path / "suite.xml")
    root = ET.parse(path).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == 2 and root.get("failures") == "1"
    failing = [c for c in cases if c.find("failure") is not None]
    assert failing[0].get("name") == "agrees with fp32" and "flip_rate" in failing[0].find("failure").get("message")


def test_measured_budgets_and_builtin_suite_loads_with_its_sha():
    res = run_suite(_suite("size_mb <= 30", "latency_ms <= 5"), SuiteInputs(_outputs(), measured={"size_mb": 22.9,
                                                                                                "latency_ms": 9.0}))
    assert [c.passed for c in res.checks] == [True, False]
    s = load_suite("quickstart")
    assert len(s.sha256) == 64 and s.reference == "fp32" and s.needs()["probes"] == ["char_swap"]
    with pytest.raises(ConfigError, match="not a built-in suite"):
        load_suite("no-such-suite")


@pytest.mark.parametrize(("body", "message"), [
    ("name: x\nslices: [class]\nchecks: ['acc >= 0.5']\n", "checks\\[0\\]: unknown metric 'acc'"),
    ("name: x\nslices: [class]\nchecks: []\n", "checks"),
    ("name: x\ndecide: maybe\nslices: [class]\nchecks: ['accuracy >= 0.5']\n", "decide"),
    ("name: x\nslices: [class]\nchecks: ['accuracy >= 0.5']\ntypo: 1\n", "typo: unknown field"),
])
def test_a_malformed_suite_file_is_a_config_error_naming_the_file(tmp_path, body, message):
    """Not pydantic's ValidationError (the CLI would report it as an unexpected failure, exit 1): exit 2."""
    (tmp_path / "bad.yaml").write_text(body)
    with pytest.raises(ConfigError, match=message) as info:
        load_suite(tmp_path / "bad.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'bad.yaml'}: the suite has 1 problem(s)")
