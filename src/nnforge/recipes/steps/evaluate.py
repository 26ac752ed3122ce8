"""Step ``evaluate``: every model variant side by side on one split (the recipe's test split unless ``split`` names
another) — quality, cost, fidelity.

The model's task decides what is measured: text classifiers get slices by metadata, perturbation-free OOD detection
and embedding cosines; classifiers over tensors (images, tables) get per-class accuracy, a confusion matrix, logit
cosines and agreement with the reference (:mod:`nnforge.recipes.steps._classifier_eval`). A split the data lack, or
a model that is not a classifier, is refused by :meth:`Evaluate.preflight` before the run folder exists."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from nnforge.config import Config
from nnforge.errors import ConfigError, StepFailedError
from nnforge.evaluate import (
    METRICS,
    Outputs,
    bootstrap_interval,
    build_slices,
    cost_side_by_side,
    flip_analysis,
    mcnemar,
    text_outputs,
)
from nnforge.evaluate.slices import Slice, check_slice_specs
from nnforge.hardware import energy_method, file_size_mb, machine_facts
from nnforge.recipes.runs import NATIVE_SUFFIX
from nnforge.recipes.steps._base import STEPS, RunContext, StepResult
from nnforge.recipes.steps._classifier_eval import class_metrics, confusion_section, evaluate_arrays
from nnforge.recipes.steps._eval_data import (
    TEXT_TASK,
    check_classifier,
    check_split,
    default_split,
    read_split,
    recipe_task,
)

log = logging.getLogger(__name__)


OODSet = Literal["stdlib-code", "stdlib-docstrings", "poems"]


class EvaluateStepConfig(Config):
    """Options of the ``evaluate`` step."""

    split: str | None = Field(None, description="the split to evaluate on (default: the recipe's data.test_split)")
    repeats: int = Field(30, ge=3, le=10_000)
    reference: str = "fp32"
    slices: list[Any] | None = Field(None, description="slices of the split (see nnforge.evaluate.slices); default: "
                                                       "class and play for text, class for other data")
    rare_below: int = Field(30, ge=1, description="slices with fewer examples are flagged rare")
    calibration: bool = Field(True, description="ECE and temperature scaling (fitted on the validation split)")
    flip_examples: int = Field(10, ge=0, le=1000, description="changed examples listed per compressed variant")
    ood: bool = Field(True, description="OOD detectors on the reference model's features (report section + guard)")
    ood_detectors: list[str] = Field(
        default_factory=lambda: ["msp", "energy", "mahalanobis", "knn", "token-ngram"],
        description="registered OOD detectors (token-ngram: the one that sees near shifts in wording, e.g. the poems)")
    ood_sets: list[OODSet] = Field(
        default_factory=lambda: list[OODSet](["stdlib-docstrings", "poems"]),
        description="out-of-distribution texts to score (poems: the Shakespeare poems, for play-trained models)")
    ood_samples: int = Field(300, ge=10, le=100_000, description="texts drawn (seeded) from each OOD set")
    ood_guard: str = Field("knn", description="the detector saved as the run's OOD guard (ood-guard.*)")
    benign_shifts: list[str] = Field(
        default_factory=lambda: ["lowercase", "uppercase", "no-punctuation", "line-breaks", "spelling"],
        description="benign rewrites of test passages (nnforge.explain.benign): each detector's false-positive "
                    "rate on them is reported beside its nominal rate")
    benign_samples: int = Field(200, ge=1, le=100_000, description="test passages rewritten per benign shift")
    benign_fit: bool = Field(True, description="fit the OOD detectors on the training passages and their rewrites "
                                               "under benign_shifts, so that harmless rewrites read as in-distribution")
    memory: bool = Field(True, description="peak serving memory of each saved variant, measured in a fresh process "
                                           "per variant (nnforge.recipes.memory_probe); off: no '<name>_peak_memory_mb'")
    native: bool = Field(True, description="also evaluate each compressed variant the native runtime can run "
                                           "(nnforge.deploy.native: int8 BERT-family encoders) as '<name>-native'")

    _slices = field_validator("slices")(classmethod(lambda cls, v: v if v is None else check_slice_specs(v)))

    @field_validator("benign_shifts")
    @classmethod
    def _known_shifts(cls, v: list[str]) -> list[str]:
        from nnforge.explain.benign import BENIGN_SHIFTS

        for name in v:
            BENIGN_SHIFTS.get(name, where="evaluate.benign_shifts")
        return v


def _slice_specs(config: Any, text: bool) -> list[Any]:
    if config.slices is not None:
        return list(config.slices)
    return ["class", {"meta": "play"}] if text else ["class"]


def _start_probe(recipe: Any) -> str | None:
    """The baseline a ``finetune`` step started its head from (LP-FT): ``logreg`` or ``logreg_balanced``."""
    for step in recipe.steps:
        if step.name == "finetune" and getattr(step.config, "init_head", None) == "probe":
            balanced = getattr(getattr(step.config, "train", None), "class_weights", None) == "balanced"
            return "logreg_balanced" if balanced else "logreg"
    return None


def _served_memory_mb(weights: Path) -> float | None:
    """Peak resident memory a fresh process needs to load ``weights`` and run one batch-32 forward,
    above the same process's footprint before loading (weights + activations)."""
    proc = subprocess.run([sys.executable, "-m", "nnforge.recipes.memory_probe", str(weights)], capture_output=True,
                          text=True, timeout=600, check=False)
    if proc.returncode != 0:
        log.warning("memory probe failed for %s: %s", weights, proc.stderr.strip()[-300:])
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out.get("peak_rss_mb") is None or out.get("baseline_rss_mb") is None:
        return None
    return float(out["peak_rss_mb"] - out["baseline_rss_mb"])


@STEPS.register("evaluate")
class Evaluate:
    name: ClassVar[str] = "evaluate"
    Config: ClassVar[type[Config]] = EvaluateStepConfig
    description: ClassVar[str] = "accuracy, macro-F1, latency p50/p95, throughput, size, peak memory, fidelity"

    def preflight(self, plan: Any, config: Any) -> None:
        """The model is a classifier of the data's kind, the split exists, slices need only what the data carry."""
        task = recipe_task(plan.recipe)
        check_classifier("evaluate", task, plan.splits)
        split = config.split or default_split(plan.recipe)
        check_split("evaluate", "split", split, plan.recipe, plan.splits)
        text = task == TEXT_TASK
        meta = [s for s in _slice_specs(config, text) if isinstance(s, dict) and "meta" in s]
        if meta and not text:
            raise ConfigError(f"evaluate: slices {meta} read per-example metadata, which array data do not carry; "
                              "use slices: [class]")
        if config.ood and text and not config.ood_sets:
            raise ConfigError("evaluate: ood is on but ood_sets is empty; name a set or set ood: false")

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        task = recipe_task(ctx.recipe)
        check_classifier("evaluate", task, ctx.data)
        split = config.split or default_split(ctx.recipe)
        if task != TEXT_TASK:
            return evaluate_arrays(
                ctx, config, split,
                lambda variants, outs, val: self._quality_sections(ctx, config, variants, outs, val, text=False),
                lambda ref, preds, name: finetune_gain(ref, preds, name, what="Training",
                                                       baseline="logistic regression on the raw inputs"))
        test = read_split(ctx.data, ctx.recipe, split)
        variants = ctx.variants or {"model": ctx.model}
        if not all(hasattr(m, "predict_proba") for m in variants.values()):
            raise StepFailedError("evaluate: the model's task is text-classification but it has no predict_proba(texts)")
        # runtimes of a saved variant (its weights file, another engine) are evaluated like variants
        runtime_of = _native_variants(variants, config.reference) if config.native else {}
        variants = {**variants, **{name: model for name, (model, _, _) in runtime_of.items()}}
        metrics: dict[str, Any] = {}
        label_names = list(ctx.model_spec.get("label_names") or [])
        total = len(variants) * 2 + 1
        done = 0
        outs: dict[str, Outputs] = {}
        for name, model in variants.items():
            outs[name] = text_outputs(model, test.texts, test.labels, test.meta, label_names)
            metrics.update(class_metrics(name, outs[name]))
            source = runtime_of[name][1] if name in runtime_of else name
            if source in ctx.variant_files:
                metrics[f"{name}_size_mb"] = file_size_mb(ctx.run_dir / ctx.variant_files[source])
            done += 1
            if ctx.progress:
                ctx.progress("evaluate", done, total)
        preds = {name: o.preds.tolist() for name, o in outs.items()}
        on_test = split == ctx.recipe.data.test_split  # the baselines' predictions are on the test split
        baseline_preds = {k: ctx.shared[f"baseline_{k}_test_preds"] for k in ("logreg", "logreg_balanced")
                          if on_test and f"baseline_{k}_test_preds" in ctx.shared}
        metrics.update(self._gains(ctx, config, outs, baseline_preds))
        ctx.sections["confusion"] = confusion_section(outs)
        ref = variants.get(config.reference)
        if ref is not None:
            ref_emb = ref.embed(test.texts)
            for name, model in variants.items():
                if name != config.reference:
                    cos = torch.nn.functional.cosine_similarity(ref_emb, model.embed(test.texts), dim=-1)
                    metrics[f"{name}_cos_mean"], metrics[f"{name}_cos_min"] = float(cos.mean()), float(cos.min())
                    metrics[f"{name}_agreement"] = METRICS.get("agreement")(outs[name], outs[config.reference])
                done += 1
                if ctx.progress:
                    ctx.progress("evaluate", done, total)
        val = ctx.data.get("val") if split != ctx.recipe.data.val_split else None
        val_outs = {name: text_outputs(model, val.texts, val.labels, val.meta, label_names)
                    for name, model in variants.items()} if config.calibration and val is not None and len(val) else None
        self._quality_sections(ctx, config, variants, outs, val_outs, text=True)
        if config.ood and ref is not None:
            self._ood_section(ctx, config, ref, test)
        costs = cost_side_by_side(variants, test.texts, repeats=config.repeats)
        for name, c in costs.items():
            metrics.update({f"{name}_{k}": v for k, v in c.items() if k != "peak_memory_mb"})
            if config.memory and name in ctx.variant_files:
                metrics[f"{name}_peak_memory_mb"] = _served_memory_mb(ctx.run_dir / ctx.variant_files[name])
        if ctx.progress:
            ctx.progress("evaluate", total, total)
        ctx.write_json("predictions", "predictions.json", {"split": split, "labels": test.labels, "predictions": preds,
                                                           "baselines": baseline_preds})
        ctx.sections["machine"] = machine_facts()
        ctx.sections["energy"] = energy_method()
        metrics.update({f"{v}_ece": c["ece_before"] for v, c in ctx.sections.get("calibration", {}).items()})
        metrics.update({f"{v}_ece_temperature_scaled": c["ece_after"]
                        for v, c in ctx.sections.get("calibration", {}).items()})
        # the figures behind the report's slice and OOD tables go into the step's ledger event, so generated
        # documents cite them exactly
        details: dict[str, Any] = {k: ctx.sections[k] for k in ("slices", "ood", "confusion", "energy") if k in ctx.sections}
        if runtime_of:
            details["runtimes"] = {name: {"variant": src, "backend": backend}
                                   for name, (_, src, backend) in runtime_of.items()}
        return StepResult(metrics=metrics, details=details)

    def _gains(self, ctx: RunContext, config: Any, outs: dict[str, Outputs],
               baseline_preds: dict[str, list[int]]) -> dict[str, Any]:
        """The fine-tuned model against the plain logistic regression (``finetune_gain``) and against the probe its
        head started from (``finetune_beats_probe``, ``finetune_probe_gain``), paired on the same test items."""
        metrics: dict[str, Any] = {}
        tuned = outs.get(config.reference)
        if tuned is None:
            return metrics
        if "logreg" in baseline_preds:
            gain = finetune_gain(tuned, baseline_preds["logreg"], config.reference)
            ctx.sections["finetune_gain"] = gain
            metrics.update({"finetune_gain": gain["estimate"], "finetune_gain_ci": [gain["low"], gain["high"]],
                            "finetune_gain_mcnemar_p": gain["mcnemar"]["p_value"],
                            "finetune_gain_significant": gain["significant"]})
        start = _start_probe(ctx.recipe)
        if start is not None and start in baseline_preds:
            probe = "class-balanced linear probe" if start.endswith("balanced") else "linear probe"
            g = finetune_gain(tuned, baseline_preds[start], config.reference,
                              baseline=f"the {probe} its head started from")
            g["baseline"] = f"baseline_{start}"
            # "beats" only when the paired interval lies above 0: a gain inside the noise is not claimed
            beats = bool(g["significant"] and g["estimate"] > 0)
            ctx.sections["finetune_vs_probe"] = {**g, "beats": beats}
            metrics.update({"finetune_beats_probe": beats, "finetune_probe_gain": g["estimate"],
                            "finetune_probe_gain_ci": [g["low"], g["high"]]})
        return metrics

    def _quality_sections(self, ctx: RunContext, config: Any, variants: dict[str, Any], outs: dict[str, Outputs],
                          val_outs: dict[str, Outputs] | None, *, text: bool) -> None:
        """Slice table, compression flips and calibration (fitted on ``val_outs``, when given), as report sections."""
        reference = outs.get(config.reference)
        slices = build_slices(next(iter(outs.values())), _slice_specs(config, text), config.rare_below)
        ctx.sections["slices"] = _slice_section(outs, slices, config.reference, config.rare_below)
        if reference is not None:
            ctx.sections["flips"] = {name: flip_analysis(o, reference, slices, examples=config.flip_examples,
                                                         reference_name=config.reference)
                                     for name, o in outs.items() if name != config.reference}
        if val_outs is not None:
            from nnforge.evaluate.calibration import (
                TemperatureScaling,
                expected_calibration_error,
                negative_log_likelihood,
                reliability_diagram,
            )

            section = {}
            for name in variants:
                val_probs, val_labels = val_outs[name].probs, val_outs[name].labels
                test_probs = torch.from_numpy(outs[name].probs)
                labels = torch.as_tensor(outs[name].labels)
                ts = TemperatureScaling().fit(torch.from_numpy(val_probs).clamp_min(1e-12).log(),
                                              torch.as_tensor(val_labels))
                after = ts.probs(test_probs.clamp_min(1e-12).log())
                section[name] = {"ece_before": expected_calibration_error(test_probs, labels),
                                 "ece_after": expected_calibration_error(after, labels),
                                 "temperature": ts.temperature, "nll_before": negative_log_likelihood(test_probs, labels),
                                 "nll_after": negative_log_likelihood(after, labels),
                                 "reliability": {"before": reliability_diagram(test_probs, labels).to_dict(),
                                                 "after": reliability_diagram(after, labels).to_dict()}}
            ctx.sections["calibration"] = section


    def _ood_section(self, ctx: RunContext, config: Any, model: Any, test: Any) -> None:
        """Fit OOD detectors on the training split's features, threshold at 95 % recall on the validation split,
        score the test split against each OOD set; save the chosen detector as the run's OOD guard."""
        from nnforge.explain import OODGuard, TextFeatures, auroc, build_detector, fpr_at_tpr, threshold_at_recall

        train, val = ctx.data["train"], ctx.data.get("val")
        if val is None or not len(val):
            return
        sets = _ood_texts(config.ood_sets, config.ood_samples, ctx.seed)
        featurize = TextFeatures(model)
        feats = {"train": featurize(train.texts), "val": featurize(val.texts), "test": featurize(test.texts)}
        ctx.shared["train_embeddings"] = (config.reference, feats["train"]["features"])  # for explain's neighbours
        feats.update({name: featurize(texts) for name, texts in sets.items()})
        benign = _benign_features(featurize, test.texts, config, ctx.seed)
        fit, fit_labels = feats["train"], torch.as_tensor(train.labels)
        rewrites, rewrite_labels = (_benign_rewrites(model, train.texts, train.labels, config.benign_shifts)
                                    if config.benign_fit else ([], []))
        if rewrites:
            fit = _concat_features(fit, featurize(rewrites))
            fit_labels = torch.cat([fit_labels, torch.as_tensor(rewrite_labels)])
        rows = []
        for name in config.ood_detectors:
            det = build_detector(name).fit(labels=fit_labels, **fit)
            guard = OODGuard(det, threshold_at_recall(det.score(**feats["val"]), 0.95, allow_inf=True), recall=0.95,
                             metadata={"model": config.reference, "detector": name, "calibration": "val split",
                                       "fitted_on": {"train": len(train.texts), "benign_rewrites": len(rewrites)}})
            test_scores = det.score(**feats["test"])
            row: dict[str, Any] = {"name": name, "threshold": guard.threshold,
                                   "id_accept": float((test_scores <= guard.threshold).float().mean())}
            for set_name in sets:
                ood_scores = det.score(**feats[set_name])
                row[set_name] = {"auroc": auroc(test_scores, ood_scores), "fpr95": fpr_at_tpr(test_scores, ood_scores),
                                 "flagged": float((ood_scores > guard.threshold).float().mean())}
            if benign:
                shifted = {k: float((det.score(**v) > guard.threshold).float().mean()) for k, v in benign.items()}
                row["benign_shift"] = {"nominal_fpr": round(1 - guard.recall, 6), "by_shift": shifted,
                                       "fpr": max(shifted.values()), "worst": max(shifted, key=shifted.__getitem__)}
            rows.append(row)
            if name == config.ood_guard:
                folder = guard.save(ctx.run_dir / "ood-guard")
                for f in sorted(folder.iterdir()):
                    ctx.record_file(f"ood-guard:{f.name}", f)
                log.info("OOD guard (%s) saved to %s", name, folder)
        ctx.sections["ood"] = {"recall": 0.95, "sets": list(sets), "detectors": rows, "reference": config.reference,
                               "samples": {k: len(v) for k, v in sets.items()},
                               "fitted_on": {"train": len(train.texts), "benign_rewrites": len(rewrites),
                                             "shifts": list(config.benign_shifts) if rewrites else []}}


def _benign_rewrites(model: Any, texts: list[str], labels: list[int],
                     shifts: list[str]) -> tuple[list[str], list[int]]:
    """Each training passage rewritten by each benign shift, with its label, where the rewrite changes what the
    model reads (an uncased tokenizer reads a lower-cased passage as the original: not repeated)."""
    from nnforge.explain.benign import shift_texts

    def ids(batch: list[str]) -> list[tuple[int, ...]]:
        enc = model.tokenizer(batch, truncation=True, max_length=getattr(model, "max_length", None))
        return [tuple(x) for x in enc["input_ids"]]

    seen = set(ids(texts))
    out, out_labels = [], []
    for shift in shifts:
        shifted = shift_texts(texts, shift)
        for text, label, key in zip(shifted, labels, ids(shifted), strict=True):
            if key not in seen:
                seen.add(key)
                out.append(text)
                out_labels.append(int(label))
    return out, out_labels


def _concat_features(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Two TextFeatures outputs as one (token rows padded with -1 to the wider of the two)."""
    out = {}
    for k, x in a.items():
        y = b[k]
        if k == "tokens" and x.shape[1] != y.shape[1]:
            width = max(x.shape[1], y.shape[1])
            x, y = (torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1) for t in (x, y))
        out[k] = torch.cat([x, y])
    return out


def _benign_features(featurize: Any, texts: list[str], config: Any, seed: int) -> dict[str, dict[str, Any]]:
    """Features of ``benign_samples`` test passages (seeded) under each benign shift that changes them."""
    from nnforge.explain.benign import shift_texts

    if not config.benign_shifts or not texts:
        return {}
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(texts), size=min(config.benign_samples, len(texts)), replace=False).tolist())
    chosen = [texts[i] for i in pick]
    return {name: featurize(shift_texts(chosen, name)) for name in config.benign_shifts}


def finetune_gain(tuned: Outputs, baseline_preds: list[int], name: str = "fp32", confidence: float = 0.95,
                  resamples: int = 2000, *, what: str = "Fine-tuning",
                  baseline: str = "logistic regression on frozen embeddings") -> dict[str, Any]:
    """Fine-tuned minus frozen-probe accuracy on the same test items: a paired bootstrap interval and McNemar's
    exact test (the probe's predictions are paired with the model's item by item), with a sentence saying
    whether the difference is significant at ``confidence``."""
    base = np.asarray(baseline_preds)
    if base.shape != tuned.preds.shape:
        raise StepFailedError(f"the baseline has {base.shape[0]} test predictions but {name} has "
                              f"{tuned.preds.shape[0]}: both must be on the same test split")
    a, b = tuned.correct.astype(np.float64), (base == tuned.labels).astype(np.float64)
    iv = bootstrap_interval(lambda i: float(a[i].mean() - b[i].mean()), len(a), resamples=resamples,
                            confidence=confidence)
    test = mcnemar(a.astype(bool), b.astype(bool))
    significant = bool(iv.low > 0 or iv.high < 0)
    pct = f"{confidence:.0%}"
    subject = "the fine-tuned model" if what == "Fine-tuning" else "the trained model"
    if significant:
        direction = "better" if iv.estimate > 0 else "worse"
        verdict = (f"{what} made a significant difference at {pct}: {subject} ({name}) is {direction} "
                   f"than {baseline} by {iv.estimate:+.3f} accuracy "
                   f"({pct} paired bootstrap interval [{iv.low:+.3f}, {iv.high:+.3f}], McNemar p = {test['p_value']:.3g}).")
    else:
        verdict = (f"{what} made no significant difference at {pct}: {subject} ({name}) differs from "
                   f"{baseline} by {iv.estimate:+.3f} accuracy, and the {pct} paired "
                   f"bootstrap interval [{iv.low:+.3f}, {iv.high:+.3f}] contains 0 (McNemar p = {test['p_value']:.3g}).")
    return {**iv.to_dict(), "variant": name, "baseline": "baseline_logreg", "n": len(a), "mcnemar": test,
            "significant": significant, "verdict": verdict}


def _native_variants(variants: dict[str, Any], reference: str) -> dict[str, tuple[Any, str, str]]:
    """``{"<name>-native": (copy whose encoder runs natively, name, backend)}`` for each compressed variant the native
    runtime runs here; the others (float models, int4, no compiler) are skipped with a log line saying why."""
    from nnforge.deploy.native import native_variant

    out: dict[str, tuple[Any, str, str]] = {}
    for name, model in variants.items():
        if name == reference:
            continue
        fast, backend = native_variant(model)
        if fast is None:
            log.info("variant %s is not evaluated natively: %s", name, backend)
            continue
        if backend == "native-scalar":
            # the portable C++ path (no AVX-512 VNNI here) is many times slower than PyTorch: evaluating it would
            # multiply the step's time (90 ms a passage for MiniLM on AVX2) to measure a runtime nobody should use here
            log.info("variant %s is not evaluated natively: this CPU has no SIMD path of the native runtime "
                     "(native-scalar, slower than PyTorch here)", name)
            continue
        out[f"{name}{NATIVE_SUFFIX}"] = (fast, name, backend)
    return out


def _ood_texts(names: list[str], n: int, seed: int) -> dict[str, list[str]]:
    from nnforge.data.stdlib import stdlib_texts

    out: dict[str, list[str]] = {}
    if any(k.startswith("stdlib") for k in names):
        std, _ = stdlib_texts(n, seed)
        out.update({k: v for k, v in std.items() if k in names})
    if "poems" in names:
        from nnforge.data.shakespeare import poem_passages

        poems = [p for ps in poem_passages().values() for p in ps]
        idx = np.random.default_rng(seed).permutation(len(poems))[:n]
        out["poems"] = [poems[i] for i in sorted(idx)]
    return {k: out[k] for k in names}


def _slice_section(outs: dict[str, Outputs], slices: dict[str, Slice], reference: str, rare_below: int,
                   confidence: float = 0.95) -> dict[str, Any]:
    rows = []
    ref = outs.get(reference)
    for k, s in enumerate(slices.values()):
        row: dict[str, Any] = {"slice": s.name, "n": int(len(s.index)), "rare": s.rare}
        for name, o in outs.items():
            correct = o.correct[s.index]

            def acc(i: np.ndarray, c: np.ndarray = correct) -> float:
                return float(c[i].mean()) if len(i) else float("nan")

            iv = bootstrap_interval(acc, len(correct), confidence=confidence, seed=k)
            cell: dict[str, float | None] = {"accuracy": iv.estimate, "low": iv.low, "high": iv.high}
            if ref is not None and name != reference:
                cell["flip_rate"] = float(np.mean(o.preds[s.index] != ref.preds[s.index])) if len(s.index) else None
            row[name] = cell
        rows.append(row)
    return {"variants": list(outs), "reference": reference, "rare_below": rare_below, "confidence": confidence,
            "rows": rows}
