"""Running a regression suite on a run's models: gather what the suite needs, run it, record it.

Used by ``nnforge evaluate RUN --suite SUITE`` and by the ``gate`` step. Everything a suite refers to —
its metrics, slices, perturbations, the reference variant, the baseline run, the model's classes and input
shape — is checked before any model runs, so a typo costs a second, not a minute.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from nnforge import runs
from nnforge.errors import ConfigError, DataError, ModelError
from nnforge.evaluate import (
    Outputs,
    Suite,
    SuiteInputs,
    SuiteResult,
    latency_b1_ms,
    run_suite,
    tensor_outputs,
    text_outputs,
    write_junit,
)
from nnforge.hardware import file_size_mb, profile
from nnforge.ledger import Ledger, atomic_write_text, file_sha256

__all__ = ["SuiteTarget", "check_suite_fits", "gather_inputs", "evaluate_run", "record_suite", "run_data"]

ProgressFn = Callable[[str, int, int], None]


@dataclass
class SuiteTarget:
    """Models (by variant name), their weights files, and the split they are judged on."""

    models: dict[str, Any]
    files: dict[str, Path]
    split: Any  # a TextSplit, or (x, y) tensors
    label_names: list[str]
    logreg: list[int] | None = None  # the run's logistic-regression predictions on this split (suite 'logreg' checks)


def run_data(config: dict[str, Any], split: str) -> Any:
    """The evaluation split of a finished run, rebuilt from the recipe it ran."""
    from nnforge.recipes.runner import load_data
    from nnforge.recipes.schema import parse_recipe

    source = config.get("recipe_source") or ""
    recipe = parse_recipe(yaml.safe_load(source) if source else config.get("recipe"), source=source)
    splits, dataset = load_data(recipe)
    if "dataset" in splits:  # array data: (x, y) of the named split
        if split not in dataset.splits:
            raise ConfigError(f"the suite evaluates split {split!r}; this run's data has {sorted(dataset.splits)}")
        x, y = dataset.splits[split]
        return torch.from_numpy(np.asarray(x)).float(), torch.from_numpy(np.asarray(y)).long()
    if split not in splits:
        raise ConfigError(f"the suite evaluates split {split!r}; this run's data has {sorted(splits)}")
    return splits[split]


def _is_text(split: Any) -> bool:
    return hasattr(split, "texts")


def _placeholder(split: Any, label_names: list[str]) -> Outputs:
    """Outputs with the split's labels, texts and metadata but no model yet: for checking slices up front."""
    if _is_text(split):
        n, k = len(split), max(len(label_names), max(split.labels, default=0) + 1)
        return Outputs(np.asarray(split.labels), np.full((n, k), 1 / k), list(split.meta), list(split.texts),
                       label_names)
    x, y = split
    k = max(len(label_names), int(y.max()) + 1 if len(y) else 1)
    return Outputs(y.numpy(), np.full((len(y), k), 1 / k), [], None, label_names)


def _labels(split: Any) -> np.ndarray:
    return np.asarray(split.labels) if _is_text(split) else split[1].numpy()


def _prediction_outputs(preds: list[int], split: Any, label_names: list[str]) -> Outputs:
    """Outputs of a baseline known only by its predictions: one-hot probabilities (accuracy and F1 read them)."""
    p = _placeholder(split, label_names)
    one_hot = np.zeros_like(p.probs)
    one_hot[np.arange(len(preds)), np.asarray(preds, dtype=np.int64)] = 1.0
    return Outputs(p.labels, one_hot, p.meta, p.texts, p.label_names)


def _outputs(model: Any, split: Any, label_names: list[str], features: bool, texts: list[str] | None = None) -> Outputs:
    if _is_text(split):
        if not hasattr(model, "predict_proba"):
            raise ModelError("the data is text but the model is not a text classifier (no predict_proba)")
        return text_outputs(model, texts if texts is not None else split.texts, split.labels, split.meta,
                            label_names, features=features)
    x, y = split
    return tensor_outputs(model, x, y, label_names=label_names)


def _latency_ms(model: Any, split: Any) -> float:
    if _is_text(split):
        return latency_b1_ms(model, split.texts)
    x = split[0][:1]
    with torch.inference_mode():
        return profile(lambda: model(x), warmup=3, repeats=20).median_ms


def _preflight(suite: Suite, target: SuiteTarget, candidate: str, baseline: SuiteTarget | None) -> dict[str, Any]:
    needs = suite.needs()
    if candidate not in target.models:
        raise ConfigError(f"no model variant {candidate!r}; this run has {sorted(target.models)}")
    if needs["reference"]:
        if not suite.reference:
            raise ConfigError(f"suite {suite.name!r} uses a paired metric or 'reference' but names no reference variant")
        if suite.reference not in target.models:
            raise ConfigError(f"suite {suite.name!r}: reference variant {suite.reference!r} is not in this run "
                              f"(it has {sorted(target.models)})")
    if needs["baseline"] and baseline is None:
        raise ConfigError(f"suite {suite.name!r} compares with a baseline: give one (--baseline RUN)")
    if needs["logreg"] and target.logreg is None:
        raise ConfigError(f"suite {suite.name!r} compares with the run's logistic-regression baseline ('logreg'), "
                          f"which this run has no predictions of on split {suite.split!r}: its recipe needs a 'baselines' "
                          "step (before evaluate and gate), and the suite the recipe's test split")
    if needs["logreg"] and target.logreg is not None and len(target.logreg) != len(_labels(target.split)):
        raise DataError(f"the run's logistic-regression baseline has {len(target.logreg)} predictions but split "
                        f"{suite.split!r} has {len(_labels(target.split))} examples")
    if needs["probes"] and not _is_text(target.split):
        raise ConfigError(f"suite {suite.name!r} uses text perturbations ({', '.join(needs['probes'])}) on non-text data")
    if "size_mb" in needs["measured"] and candidate not in target.files:
        raise ConfigError(f"variant {candidate!r} has no weights file, so size_mb cannot be measured")
    suite.check_slices(_placeholder(target.split, target.label_names))
    return needs


def check_suite_fits(suite: Suite, target: SuiteTarget, *, has_baseline: bool) -> None:
    """What can be checked before any model exists (a recipe's preflight): a baseline run for 'baseline' checks,
    text data for perturbation probes, the slices the checks name."""
    needs = suite.needs()
    if needs["baseline"] and not has_baseline:
        raise ConfigError(f"suite {suite.name!r} compares with a baseline run: give one (gate: baseline: RUN)")
    if needs["probes"] and not _is_text(target.split):
        raise ConfigError(f"suite {suite.name!r} uses text perturbations ({', '.join(needs['probes'])}) on non-text data")
    suite.check_slices(_placeholder(target.split, target.label_names))


def gather_inputs(suite: Suite, target: SuiteTarget, candidate: str, *, baseline: SuiteTarget | None = None,
                  baseline_variant: str | None = None, progress: ProgressFn | None = None) -> SuiteInputs:
    """Run the models the suite needs (candidate, reference, baseline, perturbed inputs) and measure budgets."""
    from nnforge.evaluate.robust import perturb_texts

    needs = _preflight(suite, target, candidate, baseline)
    base_variant = baseline_variant or (next(reversed(baseline.models)) if baseline else None)
    if baseline is not None and base_variant not in baseline.models:
        raise ConfigError(f"the baseline run has no variant {base_variant!r}; it has {sorted(baseline.models)}")
    jobs = 1 + bool(needs["reference"]) + (1 + len(needs["probes"])) * (baseline is not None) + len(needs["probes"])
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(f"suite {suite.name}", done, jobs)

    feats = needs["features"]
    inputs = SuiteInputs(_outputs(target.models[candidate], target.split, target.label_names, feats))
    tick()
    if needs["reference"] and suite.reference:
        inputs.reference = _outputs(target.models[suite.reference], target.split, target.label_names, feats)
        tick()
    if needs["logreg"] and target.logreg is not None:
        inputs.logreg = _prediction_outputs(target.logreg, target.split, target.label_names)
    if baseline is not None and base_variant is not None:
        inputs.baseline = _outputs(baseline.models[base_variant], target.split, target.label_names, feats)
        tick()
    for kind in needs["probes"]:
        texts = perturb_texts(target.split.texts, kind, rate=suite.perturbation_rate, seed=suite.seed)
        inputs.probes[kind] = _outputs(target.models[candidate], target.split, target.label_names, False, texts)
        tick()
        if baseline is not None and base_variant is not None:
            inputs.baseline_probes[kind] = _outputs(baseline.models[base_variant], target.split, target.label_names,
                                                    False, texts)
            tick()
    for name, src, variant in (("measured", target, candidate), ("reference_measured", target, suite.reference),
                               ("baseline_measured", baseline, base_variant)):
        if src is None or variant is None or variant not in src.models:
            continue
        values = getattr(inputs, name)
        if "size_mb" in needs["measured"] and variant in src.files:
            values["size_mb"] = file_size_mb(src.files[variant])
        if "latency_ms" in needs["measured"]:
            values["latency_ms"] = _latency_ms(src.models[variant], target.split)
    return inputs


def _run_target(run: Any, split: str) -> SuiteTarget:
    models = {v: run.model(v) for v in run.variants}
    return SuiteTarget(models, {v: run.path / f for v, f in run.variants.items()}, run_data(run.config, split),
                       run.label_names)


def record_suite(result: SuiteResult, run_dir: Path, ledger: Ledger, run_id: str, *, variant: str,
                 suite_path: str, baseline: str | None = None, junit: Path | None = None,
                 sections: dict[str, Any] | None = None, final: bool = True,
                 weights: Path | None = None) -> dict[str, Path]:
    """Write the suite's JSON and JUnit XML into the run folder, add the report section (to ``sections`` when
    given — a running recipe's — else to the run's sections.json), and append the ledger event.

    The files are ``suite-NAME.json`` for the run's final variant (``final``) and ``suite-NAME@VARIANT.json``
    for any other, so judging a second variant never replaces the first one's result. ``weights`` (the variant's
    file) is hashed into the event, so that the promotion gate knows which bytes the verdict is about."""
    key = result.suite if final else f"{result.suite}@{variant}"
    out_json = run_dir / f"suite-{key}.json"
    atomic_write_text(out_json, json.dumps({**result.to_dict(), "variant": variant, "baseline": baseline},
                                           indent=2, default=str) + "\n")
    junit_path = write_junit(result, junit or run_dir / f"suite-{key}.junit.xml")
    section = {**result.to_dict(), "variant": variant, "baseline": baseline}
    if sections is not None:
        sections.setdefault("suites", {})[key] = section
    else:
        on_disk = runs.read_sections(run_dir)
        on_disk.setdefault("suites", {})[key] = section
        runs.write_sections(run_dir, on_disk)
    ledger.append("suite.evaluated", {
        "suite": result.suite, "suite_sha256": result.sha256, "suite_source": suite_path, "variant": variant,
        "baseline": baseline, "weights_sha256": file_sha256(weights) if weights is not None else None,
        "passed": result.passed, "failed": [c.spec.name for c in result.failed],
        "checks": [{"check": c.spec.text, "verdict": c.verdict, "value": c.value, "threshold": c.threshold}
                   for c in result.checks],
        "outputs": {"json": file_sha256(out_json), "junit": file_sha256(junit_path)}}, run=run_id)
    return {"json": out_json, "junit": junit_path}


def _saved_logreg(run: Any, split: str) -> list[int] | None:
    """The logistic-regression predictions the run's evaluate step saved, if they are on ``split``."""
    from nnforge.recipes.schema import parse_recipe

    path = run.path / "predictions.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        source = run.config.get("recipe_source") or ""
        recipe = parse_recipe(yaml.safe_load(source) if source else run.config.get("recipe"), source=source)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    on = saved.get("split", recipe.data.test_split)  # runs before the field: the evaluate step read the test split
    preds = (saved.get("baselines") or {}).get("logreg")
    return [int(p) for p in preds] if on == split and split == recipe.data.test_split and preds else None


def evaluate_run(run: str | Path, suite: Suite, *, ledger: Ledger, variant: str | None = None,
                 baseline: str | Path | None = None, baseline_variant: str | None = None,
                 runs_dir: str | Path = "runs", junit: Path | None = None, suite_path: str = "",
                 progress: ProgressFn | None = None, allow_modified: bool = False) -> tuple[SuiteResult, dict[str, Path]]:
    """Judge a finished run's model with ``suite``; writes the results into the run folder and the ledger."""
    from nnforge.recipes.runs import find_run, load_run

    r = load_run(run, runs_dir, allow_modified=allow_modified, use="evaluate")  # files checked against the ledger
    ledger.run_events(r.run_id)  # the ledger must be the run's: its report is re-rendered from it at the end
    base_path = find_run(baseline, runs_dir) if baseline is not None else None  # a missing baseline fails here
    if not r.variants:
        raise ModelError(f"run {r.path} saved no model to evaluate")
    final_name = r.config.get("final_variant") or next(reversed(r.variants))
    name = variant or final_name
    files = {v: r.path / f for v, f in r.variants.items()}
    files[name] = r.variant_file(name)  # "int8-native": the int8 file, run by the native runtime
    split = run_data(r.config, suite.split)
    logreg = _saved_logreg(r, suite.split)
    placeholder = SuiteTarget({v: None for v in files}, files, split, r.label_names, logreg)
    base_run = load_run(base_path) if base_path is not None else None
    base_placeholder = SuiteTarget({v: None for v in base_run.variants}, {}, split, base_run.label_names) \
        if base_run is not None else None
    if base_run is not None and base_run.label_names != r.label_names:
        raise DataError(f"the baseline run's classes {base_run.label_names} differ from this run's {r.label_names}")
    needs = _preflight(suite, placeholder, name, base_placeholder)  # every name checked before any model loads
    wanted = {name} | ({suite.reference} if needs["reference"] and suite.reference else set())
    target = SuiteTarget({v: r.model(v) for v in files if v in wanted}, files, split, r.label_names, logreg)
    base_target = None
    if base_run is not None:
        bv = baseline_variant or base_run.config.get("final_variant") or next(reversed(base_run.variants))
        if bv not in base_run.variants:
            raise ConfigError(f"the baseline run has no variant {bv!r}; it has {sorted(base_run.variants)}")
        base_target = SuiteTarget({bv: base_run.model(bv)}, {}, split, base_run.label_names)
        baseline_variant = bv
    inputs = gather_inputs(suite, target, name, baseline=base_target, baseline_variant=baseline_variant,
                           progress=progress)
    result = run_suite(suite, inputs)
    files = record_suite(result, r.path, ledger, r.run_id, variant=name, suite_path=suite_path, final=name == final_name,
                         baseline=str(base_path) if base_path else None, junit=junit, weights=files[name])
    from nnforge.govern.report import write_report

    files["report"] = write_report(r.path, ledger)
    return result, files
