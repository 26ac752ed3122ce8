"""The ``evaluate`` step's path for classifiers over tensors (images, tables, any ``model(x) -> logits (B, C)``),
and the per-class figures every classifier gets (per-class accuracy, confusion matrix).

Metrics per variant: accuracy, macro-F1, per-class accuracy (and the lowest), batch-1 latency p50/p95, batch-32
throughput, size on disk; per compressed variant: agreement with the reference's predictions and the cosine of its
logits to the reference's. Report sections: ``confusion`` (matrix and per-class accuracy per variant), ``slices``,
``flips``, ``calibration`` (where the data have a validation split). No OOD section: nnforge's OOD sets are texts.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from nnforge.errors import DataError, ModelError
from nnforge.evaluate import METRICS, Outputs
from nnforge.hardware import compare, energy_method, energy_per_call, file_size_mb
from nnforge.recipes.steps._base import RunContext, StepResult
from nnforge.recipes.steps._eval_data import read_split

__all__ = ["logits_of", "array_outputs", "confusion_section", "class_metrics", "evaluate_arrays"]


@torch.no_grad()
def logits_of(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``model(x)`` in batches, in eval mode (restored after); a model that does not fit ``x`` fails on one example."""
    was_training = model.training
    model.eval()
    try:
        try:
            first = model(x[:1])
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ModelError(f"the model does not accept inputs of shape {tuple(x.shape[1:])} (per example): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if not isinstance(first, torch.Tensor) or first.ndim != 2:
            shape = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
            raise ModelError(f"a classifier returns logits of shape (B, C); this model returned {shape}")
        return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)]).cpu()
    finally:
        model.train(was_training)


def array_outputs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, label_names: list[str]) -> Outputs:
    """Outputs of a tensor classifier, with its logits as features (the cosine to the reference reads them)."""
    logits = logits_of(model, x)
    if len(label_names) and logits.shape[1] != len(label_names):
        raise ModelError(f"the model has {logits.shape[1]} outputs but the data have {len(label_names)} classes "
                         f"({', '.join(label_names[:10])})")
    if len(y) and int(y.max()) >= logits.shape[1]:
        raise DataError(f"labels go up to {int(y.max())} but the model has only {logits.shape[1]} outputs")
    return Outputs(y.numpy(), torch.softmax(logits, dim=-1).numpy(), [], None, list(label_names), logits.numpy())


def _names(out: Outputs) -> list[str]:
    return list(out.label_names) or [str(i) for i in range(out.num_classes)]


def confusion_section(outs: dict[str, Outputs]) -> dict[str, Any]:
    """Per variant: the confusion matrix (rows: true class, columns: predicted) and each class's accuracy (recall)."""
    section: dict[str, Any] = {}
    for name, o in outs.items():
        k = o.num_classes
        matrix = np.zeros((k, k), dtype=np.int64)
        np.add.at(matrix, (o.labels.astype(np.int64), o.preds.astype(np.int64)), 1)
        support = matrix.sum(axis=1)
        per_class = {label: (float(matrix[i, i] / support[i]) if support[i] else None)
                     for i, label in enumerate(_names(o))}
        section[name] = {"labels": _names(o), "matrix": matrix.tolist(), "support": support.tolist(),
                         "per_class_accuracy": per_class}
    return section


def class_metrics(name: str, out: Outputs) -> dict[str, Any]:
    """``{name}_acc``, ``{name}_macro_f1``, ``{name}_per_class_acc`` (class → accuracy) and ``{name}_min_class_acc``."""
    per = confusion_section({name: out})[name]["per_class_accuracy"]
    present = [v for v in per.values() if v is not None]
    return {f"{name}_acc": METRICS.get("accuracy")(out), f"{name}_macro_f1": METRICS.get("macro_f1")(out),
            f"{name}_per_class_acc": per, f"{name}_min_class_acc": min(present) if present else None}


def _costs(variants: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    """Batch-1 latency (p50/p95, ms) and batch-32 throughput (examples/s), timed interleaved across variants, and
    batch-1 energy per inference (J; RAPL where readable, else the labelled estimate)."""
    one, batch = x[:1], x[:32]
    for m in variants.values():
        m.eval()
    p1 = compare({k: partial(m, one) for k, m in variants.items()}, warmup=3, repeats=repeats)
    p32 = compare({k: partial(m, batch) for k, m in variants.items()}, warmup=2, repeats=max(3, repeats // 3))
    return {k: {"latency_b1_ms": p1[k].median_ms, "latency_b1_p95_ms": p1[k].p95_ms, "latency_b1_iqr_ms": p1[k].iqr_ms,
                "throughput_b32": len(batch) / (p32[k].median_ms / 1e3),
                "energy_j_per_inference": energy_per_call(partial(variants[k], one), calls=repeats).joules} for k in variants}



def evaluate_arrays(ctx: RunContext, config: Any, split: str,
                    quality: Callable[[dict[str, Any], dict[str, Outputs], dict[str, Outputs] | None], None],
                    gain: Callable[[Outputs, list[int], str], dict[str, Any]]) -> StepResult:
    """Every variant of a tensor classifier on ``split``; ``quality`` adds the slice, flip and calibration sections,
    ``gain`` pairs the reference with the ``baselines`` step's logistic regression (when it ran on this split)."""
    x, y = read_split(ctx.data, ctx.recipe, split)
    variants = ctx.variants or {"model": ctx.model}
    label_names = list(ctx.model_spec.get("label_names") or [])
    metrics: dict[str, Any] = {}
    outs: dict[str, Outputs] = {}
    for done, (name, model) in enumerate(variants.items(), 1):
        outs[name] = array_outputs(model, x, y, label_names)
        metrics.update(class_metrics(name, outs[name]))
        if name in ctx.variant_files:
            metrics[f"{name}_size_mb"] = file_size_mb(ctx.run_dir / ctx.variant_files[name])
        if ctx.progress:
            ctx.progress("evaluate", done, len(variants) + 1)
    ref = outs.get(config.reference)
    if ref is not None:
        for name, o in outs.items():
            if name != config.reference:
                cos = torch.nn.functional.cosine_similarity(torch.from_numpy(ref.features), torch.from_numpy(o.features),
                                                            dim=-1)
                metrics[f"{name}_cos_mean"], metrics[f"{name}_cos_min"] = float(cos.mean()), float(cos.min())
                metrics[f"{name}_agreement"] = METRICS.get("agreement")(o, ref)
    ctx.sections["confusion"] = confusion_section(outs)
    val = _val_outputs(ctx, config, variants, label_names, split)
    quality(variants, outs, val)
    if val is None:  # no validation split to fit a temperature on: the test-split ECE alone
        metrics.update({f"{name}_ece": METRICS.get("ece")(o) for name, o in outs.items()})
    on_test = split == ctx.recipe.data.test_split  # the baselines step predicts the test split
    baseline_preds = {k: ctx.shared[f"baseline_{k}_test_preds"] for k in ("logreg",)
                      if on_test and f"baseline_{k}_test_preds" in ctx.shared}
    if "logreg" in baseline_preds and ref is not None:
        g = gain(ref, baseline_preds["logreg"], config.reference)
        ctx.sections["logreg_gain"] = g
        metrics.update({"logreg_gain": g["estimate"], "logreg_gain_ci": [g["low"], g["high"]],
                        "logreg_gain_mcnemar_p": g["mcnemar"]["p_value"], "logreg_gain_significant": g["significant"]})
    for name, c in _costs(variants, x, config.repeats).items():
        metrics.update({f"{name}_{k}": v for k, v in c.items()})
    ctx.sections["energy"] = energy_method()
    if ctx.progress:
        ctx.progress("evaluate", len(variants) + 1, len(variants) + 1)
    ctx.write_json("predictions", "predictions.json", {
        "split": split, "labels": y.tolist(), "predictions": {n: o.preds.tolist() for n, o in outs.items()},
        "baselines": baseline_preds})
    details: dict[str, Any] = {k: ctx.sections[k] for k in ("slices", "confusion", "energy") if k in ctx.sections}
    return StepResult(metrics=metrics, details=details)


def _val_outputs(ctx: RunContext, config: Any, variants: dict[str, Any], label_names: list[str],
                 split: str) -> dict[str, Outputs] | None:
    val_name = ctx.recipe.data.val_split
    ds = ctx.data["dataset"]
    if not config.calibration or not val_name or val_name == split or val_name not in ds.splits:
        return None
    xv, yv = read_split(ctx.data, ctx.recipe, val_name)
    return {name: array_outputs(m, xv, yv, label_names) for name, m in variants.items()}
