"""Regression suites: a YAML file of checks that a model must pass before it ships.

A suite names the slices it cares about and lists checks, one line each::

    name: quickstart
    reference: fp32                 # the model that paired metrics (flip_rate, agreement) compare with
    slices: [class, {meta: play}, {name: long, where: "words > 40"}]
    checks:
      - accuracy >= 0.40                                   # absolute
      - slice:class:history accuracy >= baseline - 0.05    # relative to a saved baseline run
      - flip_rate <= 0.10                                  # agreement with the reference model
      - accuracy:char_swap >= 0.35                         # robustness: under a seeded perturbation
      - ece <= 0.15                                        # calibration
      - latency_ms <= 50                                   # budgets
      - size_mb <= 30
      - accuracy >= logreg                                 # vs the run's own logistic-regression baseline

A check reads ``[slice:SLICE] METRIC[:PROBE] OP RHS`` with OP one of ``>= > <= <`` and RHS a number or
``baseline``/``reference``/``logreg`` plus or minus a number (``logreg``: the logistic regression the run's
``baselines`` step fitted, predicting the same examples; accuracy and macro_f1 only). METRIC is any name in
:data:`~nnforge.evaluate.metrics.METRICS`; PROBE a text perturbation (the metric is then computed on the
perturbed inputs; a paired metric compares with the model's own clean predictions).

**How "worse" is decided.** Absolute checks compare the point estimate with the threshold and show a
bootstrap interval. Relative checks compare two models on the same examples: the paired bootstrap
interval of the difference (candidate − baseline) decides — with ``decide: significant`` (the default) a
check fails only when the whole interval lies on the wrong side of the margin, so noise alone cannot fail
a build, and a point estimate on the wrong side that is not significant passes with a warning. Accuracy
comparisons also report McNemar's exact test. ``decide: point`` compares point estimates instead.

Everything a suite refers to (metrics, slices, probes, a baseline) is checked before any model runs.
"""

from __future__ import annotations

import hashlib
import math
import operator
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, field_validator

from nnforge.config import Config, describe_validation_error
from nnforge.errors import ConfigError, DataError
from nnforge.evaluate.metrics import METRICS, Metric
from nnforge.evaluate.outputs import Outputs, check_paired
from nnforge.evaluate.slices import RARE_BELOW, Slice, build_slices, check_slice_specs
from nnforge.evaluate.stats import Interval, bootstrap_interval, mcnemar

__all__ = ["Suite", "CheckSpec", "SuiteInputs", "CheckResult", "SuiteResult", "load_suite", "parse_check",
           "run_suite", "builtin_suites", "write_junit"]

_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le,
                                                   "<": operator.lt}
_CHECK = re.compile(r"^\s*(?:slice:(?P<slice>\S+)\s+)?(?P<metric>[a-z][a-z0-9_]*)(?::(?P<probe>[a-z][a-z0-9_]*))?"
                    r"\s*(?P<op>>=|<=|>|<)\s*(?P<rhs>.+?)\s*$")
_RHS = re.compile(r"^(?:(?P<num>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<ref>baseline|reference|logreg)"
                  r"(?:\s*(?P<sign>[-+])\s*(?P<off>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))?)$")
BUILTIN_DIR = Path(__file__).parent / "suites"


@dataclass(frozen=True)
class CheckSpec:
    """One parsed check."""

    text: str
    name: str
    metric: str
    op: str
    slice: str = "all"
    probe: str | None = None
    against: Literal["value", "baseline", "reference", "logreg"] = "value"
    threshold: float = 0.0  # the number, or the offset added to the baseline/reference value
    decide: Literal["significant", "point"] = "significant"


def parse_check(raw: Any, where: str = "checks", decide: str = "significant") -> CheckSpec:
    """A :class:`CheckSpec` from ``"METRIC OP RHS"`` or ``{check: ..., name: ..., decide: ...}``."""
    name = None
    if isinstance(raw, dict):
        extra = set(raw) - {"check", "name", "decide"}
        if "check" not in raw or extra:
            raise ConfigError(f"{where}: a check is a string or {{check: ..., name: ..., decide: ...}}; got keys "
                              f"{sorted(raw)}")
        name, decide, raw = raw.get("name"), raw.get("decide", decide), raw["check"]
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: a check is a string like 'accuracy >= 0.8'; got {raw!r}")
    if decide not in ("significant", "point"):
        raise ConfigError(f"{where}: decide must be 'significant' or 'point'; got {decide!r}")
    m = _CHECK.match(raw)
    if not m:
        raise ConfigError(f"{where}: cannot read {raw!r}; write '[slice:SLICE] METRIC[:PROBE] OP RHS', "
                          "e.g. 'slice:class:history accuracy >= baseline - 0.01'")
    METRICS.get(m["metric"], where=where)  # unknown metric: a clear error with a suggestion
    r = _RHS.match(m["rhs"].strip())
    if not r:
        raise ConfigError(f"{where}: the right-hand side {m['rhs']!r} must be a number, or 'baseline'/'reference' "
                          "optionally plus or minus a number")
    if r["num"] is not None:
        against, threshold = "value", float(r["num"])
    else:
        against = r["ref"]
        if against == "logreg" and (m["metric"] not in ("accuracy", "macro_f1") or m["probe"]):
            raise ConfigError(f"{where}: {raw!r}: the logreg baseline has predictions only, so it compares accuracy "
                              "or macro_f1 on clean inputs")
        threshold = (-1 if r["sign"] == "-" else 1) * float(r["off"]) if r["off"] else 0.0
    if m["probe"]:
        from nnforge.evaluate.robust import TEXT_PERTURBATIONS

        TEXT_PERTURBATIONS.get(m["probe"], where=where)
    return CheckSpec(raw.strip(), name or raw.strip(), m["metric"], m["op"], m["slice"] or "all", m["probe"],
                     against, threshold, decide)  # type: ignore[arg-type]


class Suite(Config):
    """A regression suite (see the module docstring for the file format)."""

    name: str = Field(pattern=r"^[\w.-]+$")
    description: str = ""
    split: str = "test"
    reference: str | None = Field(None, description="variant that paired metrics compare with (e.g. fp32)")
    rare_below: int = Field(RARE_BELOW, ge=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    resamples: int = Field(1000, ge=100, le=100_000)
    seed: int = 0
    decide: Literal["significant", "point"] = "significant"
    perturbation_rate: float = Field(0.1, gt=0, le=1, description="rate of the text perturbations of probes")
    slices: list[Any] = Field(default_factory=list)
    checks: list[Any] = Field(min_length=1)
    sha256: str = Field("", description="SHA-256 of the file the suite was read from (set by load_suite)")

    _slices = field_validator("slices")(classmethod(lambda cls, v: check_slice_specs(v)))

    @field_validator("checks")
    @classmethod
    def _checks(cls, v: list[Any]) -> list[Any]:
        for k, raw in enumerate(v):
            parse_check(raw, f"checks[{k}]")
        return v

    def parsed_checks(self) -> list[CheckSpec]:
        return [parse_check(raw, f"checks[{k}]", self.decide) for k, raw in enumerate(self.checks)]

    def needs(self) -> dict[str, Any]:
        """What running this suite needs beyond the candidate's outputs."""
        checks = self.parsed_checks()
        metrics = [METRICS.get(c.metric) for c in checks]
        return {"reference": any(m.kind == "paired" and not c.probe for c, m in zip(checks, metrics, strict=True))
                or any(c.against == "reference" for c in checks),
                "baseline": any(c.against == "baseline" for c in checks),
                "logreg": any(c.against == "logreg" for c in checks),
                "probes": sorted({c.probe for c in checks if c.probe}),
                "measured": sorted({m.name for m in metrics if m.kind == "measured"}),
                "features": any(m.name == "cos_fidelity" for m in metrics)}

    def check_slices(self, example: Outputs) -> None:
        """Fail (before any model runs) if a check names a slice the suite's slices do not define."""
        names = build_slices(example, self.slices, self.rare_below)
        for k, c in enumerate(self.parsed_checks()):
            if c.slice not in names:
                raise ConfigError(f"checks[{k}]: unknown slice {c.slice!r}; this suite on this data defines "
                                  f"{', '.join(names)}")


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_suite(source: str | Path) -> Suite:
    """A suite from a YAML file or a built-in name; its ``sha256`` is that of the file's bytes."""
    path = Path(source)
    if not path.is_file():
        if (BUILTIN_DIR / f"{source}.yaml").is_file():
            path = BUILTIN_DIR / f"{source}.yaml"
        else:
            raise ConfigError(f"suite {source!r}: no such file, and not a built-in suite ({', '.join(builtin_suites())})")
    blob = path.read_bytes()
    try:
        doc = yaml.safe_load(blob)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a suite is a YAML mapping with name, slices and checks")
    doc["sha256"] = hashlib.sha256(blob).hexdigest()
    try:
        return Suite.model_validate(doc)
    except ValidationError as exc:  # an unknown metric, slice spec or field: a user error, named with the file
        problems = describe_validation_error(exc, owner="Suite")
        raise ConfigError(f"{path}: the suite has {len(problems)} problem(s):\n  " + "\n  ".join(problems)) from None


@dataclass
class SuiteInputs:
    """What the candidate model (and its comparators) produced; see :meth:`Suite.needs` for what is required."""

    candidate: Outputs
    reference: Outputs | None = None
    baseline: Outputs | None = None
    probes: dict[str, Outputs] = field(default_factory=dict)
    baseline_probes: dict[str, Outputs] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)
    reference_measured: dict[str, float] = field(default_factory=dict)
    baseline_measured: dict[str, float] = field(default_factory=dict)
    logreg: Outputs | None = None  # the run's logistic-regression baseline (its predictions, as one-hot outputs)


@dataclass
class CheckResult:
    spec: CheckSpec
    passed: bool
    verdict: str  # "pass", "fail", "pass (not significant)"
    value: float
    threshold: float
    n: int
    interval: Interval | None = None
    other_value: float | None = None  # the baseline's/reference's value for relative checks
    difference: Interval | None = None
    mcnemar: dict[str, float] | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.spec.name, "check": self.spec.text, "slice": self.spec.slice, "metric": self.spec.metric,
                "probe": self.spec.probe, "against": self.spec.against, "op": self.spec.op, "passed": self.passed,
                "verdict": self.verdict, "value": self.value, "threshold": self.threshold, "n": self.n,
                "interval": self.interval.to_dict() if self.interval else None, "other_value": self.other_value,
                "difference": self.difference.to_dict() if self.difference else None, "mcnemar": self.mcnemar,
                "message": self.message}


@dataclass
class SuiteResult:
    suite: str
    sha256: str
    passed: bool
    checks: list[CheckResult]
    slices: list[dict[str, Any]]

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "sha256": self.sha256, "passed": self.passed,
                "failed": [c.spec.name for c in self.failed], "checks": [c.to_dict() for c in self.checks],
                "slices": self.slices}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _outputs_for(spec: CheckSpec, which: Outputs | None, probes: dict[str, Outputs], what: str) -> Outputs:
    out = probes.get(spec.probe) if spec.probe else which
    if out is None:
        raise DataError(f"check {spec.text!r} needs the {what}'s outputs{' under ' + spec.probe if spec.probe else ''}")
    return out


def _metric_value(metric: Metric, spec: CheckSpec, out: Outputs, clean: Outputs, ref: Outputs | None,
                  idx: np.ndarray) -> float:
    partner = clean if spec.probe else ref  # under a probe, paired metrics compare with the clean predictions
    return metric(out.subset(idx), partner.subset(idx) if partner is not None else None)


def _check(spec: CheckSpec, suite: Suite, inputs: SuiteInputs, slices: dict[str, Slice], k: int) -> CheckResult:
    metric = METRICS.get(spec.metric)
    op = _OPS[spec.op]
    if metric.kind == "measured":
        value = inputs.measured.get(metric.name)
        if value is None:
            raise DataError(f"check {spec.text!r}: {metric.name} was not measured")
        other = None
        if spec.against != "value":
            src = inputs.baseline_measured if spec.against == "baseline" else inputs.reference_measured
            other = src.get(metric.name)
            if other is None:
                raise DataError(f"check {spec.text!r}: the {spec.against}'s {metric.name} was not measured")
        threshold = spec.threshold + (other or 0.0)
        ok = op(value, threshold)
        return CheckResult(spec, ok, "pass" if ok else "fail", value, threshold, len(inputs.candidate),
                           other_value=other, message=f"{metric.name} {_fmt(value)} {spec.op} {_fmt(threshold)}")
    idx = slices[spec.slice].index
    cand = _outputs_for(spec, inputs.candidate, inputs.probes, "candidate")
    ref = inputs.reference

    def stat(sub: np.ndarray) -> float:
        return _metric_value(metric, spec, cand, inputs.candidate, ref, idx[sub])

    interval = bootstrap_interval(stat, len(idx), resamples=suite.resamples, confidence=suite.confidence,
                                  seed=suite.seed + k)
    value = interval.estimate
    if spec.against == "value":
        ok = bool(op(value, spec.threshold)) if not math.isnan(value) else False
        msg = f"{spec.metric} {_fmt(value)} [{_fmt(interval.low)}, {_fmt(interval.high)}] {spec.op} {_fmt(spec.threshold)}"
        return CheckResult(spec, ok, "pass" if ok else "fail", value, spec.threshold, len(idx), interval,
                           message=msg + ("" if not math.isnan(value) else " (undefined on this slice)"))
    other_out = {"baseline": inputs.baseline, "logreg": inputs.logreg}.get(spec.against, inputs.reference)
    other_probes = inputs.baseline_probes if spec.against == "baseline" else {}
    if other_out is None:
        raise DataError(f"check {spec.text!r} compares with the {spec.against}, which was not given")
    other_outputs = _outputs_for(spec, other_out, other_probes, spec.against)
    check_paired(inputs.candidate, other_out, f"check {spec.text!r}")

    def diff(sub: np.ndarray) -> float:
        i = idx[sub]
        return (_metric_value(metric, spec, cand, inputs.candidate, ref, i)
                - _metric_value(metric, spec, other_outputs, other_out, ref, i))

    d = bootstrap_interval(diff, len(idx), resamples=suite.resamples, confidence=suite.confidence,
                           seed=suite.seed + k)
    other_value = value - d.estimate
    threshold = other_value + spec.threshold
    if math.isnan(d.estimate) or math.isnan(d.low) or math.isnan(d.high):  # a check that measured nothing fails
        return CheckResult(spec, False, "fail", value, threshold, len(idx), interval, other_value, d, None,
                           f"{spec.metric} vs {spec.against}: undefined on this slice (n={len(idx)}), so it "
                           "cannot show the model is no worse")
    point_ok = bool(op(d.estimate, spec.threshold))
    if spec.decide == "point":
        ok, verdict = point_ok, "pass" if point_ok else "fail"
    else:
        significant_fail = d.high < spec.threshold if spec.op in (">=", ">") else d.low > spec.threshold
        ok = not significant_fail
        verdict = "pass" if point_ok else ("pass (not significant)" if ok else "fail")
    mc = mcnemar(cand.subset(idx).correct, other_outputs.subset(idx).correct) if metric.name == "accuracy" else None
    msg = (f"{spec.metric} {_fmt(value)} vs {spec.against} {_fmt(other_value)}: difference {_fmt(d.estimate)} "
           f"[{_fmt(d.low)}, {_fmt(d.high)}] at {suite.confidence:.0%}, margin {spec.threshold:+g}"
           + (f"; McNemar p = {mc['p_value']:.3g}" if mc else ""))
    return CheckResult(spec, ok, verdict, value, threshold, len(idx), interval, other_value, d, mc, msg)


def run_suite(suite: Suite, inputs: SuiteInputs, slice_metrics: Sequence[str] = ("accuracy",)) -> SuiteResult:
    """Evaluate every check of ``suite`` on ``inputs``; the result says which passed and why."""
    needs = suite.needs()
    missing = [w for w in ("reference", "baseline", "logreg") if needs[w] and getattr(inputs, w) is None]
    missing += [f"probe {p}" for p in needs["probes"] if p not in inputs.probes]
    missing += [f"measured {m}" for m in needs["measured"] if m not in inputs.measured]
    if missing:
        raise DataError(f"suite {suite.name!r} needs {', '.join(missing)}")
    if inputs.reference is not None:
        check_paired(inputs.candidate, inputs.reference, f"suite {suite.name!r} reference")
    suite.check_slices(inputs.candidate)
    slices = build_slices(inputs.candidate, suite.slices, suite.rare_below)
    results = [_check(c, suite, inputs, slices, k) for k, c in enumerate(suite.parsed_checks())]
    from nnforge.evaluate.slices import slice_table

    metrics = list(slice_metrics) + (["flip_rate"] if inputs.reference is not None else [])
    table = slice_table(inputs.candidate, slices, metrics, inputs.reference)
    return SuiteResult(suite.name, suite.sha256, all(r.passed for r in results), results, table)


def write_junit(result: SuiteResult, path: str | Path, classname: str = "nnforge.suite") -> Path:
    """The suite as JUnit XML (one testcase per check; failures carry the measured values), written atomically."""
    from nnforge.ledger import atomic_write_text

    root = ET.Element("testsuites", name=f"nnforge {result.suite}", tests=str(len(result.checks)),
                      failures=str(len(result.failed)))
    ts = ET.SubElement(root, "testsuite", name=result.suite, tests=str(len(result.checks)),
                       failures=str(len(result.failed)), errors="0", skipped="0")
    props = ET.SubElement(ts, "properties")
    ET.SubElement(props, "property", name="suite_sha256", value=result.sha256)
    for c in result.checks:
        case = ET.SubElement(ts, "testcase", classname=f"{classname}.{result.suite}", name=c.spec.name)
        if not c.passed:
            failure = ET.SubElement(case, "failure", message=f"{c.spec.text}: {c.message}", type="RegressionCheckFailed")
            failure.text = c.message
        out = ET.SubElement(case, "system-out")
        out.text = f"{c.verdict}: {c.message} (n={c.n}, slice {c.spec.slice})"
    ET.indent(root)
    atomic_write_text(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
    return Path(path)
