"""Step ``evaluate``: every model variant side by side on the test split — quality, cost, fidelity."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from nnforge.adapt.finetune import predict_labels
from nnforge.config import Config
from nnforge.errors import StepFailedError
from nnforge.evaluate import cost_side_by_side, quality
from nnforge.hardware import file_size_mb, machine_facts
from nnforge.recipes.steps._base import STEPS, RunContext, StepResult

log = logging.getLogger(__name__)


class EvaluateStepConfig(Config):
    """Options of the ``evaluate`` step."""

    repeats: int = Field(30, ge=3, le=10_000)
    reference: str = "fp32"


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

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        test = ctx.data["test"]
        variants = ctx.variants or {"model": ctx.model}
        if not all(hasattr(m, "tokenize") for m in variants.values()):
            raise StepFailedError("the evaluate step handles text classifiers in this version")
        metrics: dict[str, Any] = {}
        preds: dict[str, list[int]] = {}
        total = len(variants) * 2 + 1
        done = 0
        for name, model in variants.items():
            q = quality(model, test.texts, test.labels, predict_labels)
            preds[name] = q.pop("predictions")
            metrics[f"{name}_acc"], metrics[f"{name}_macro_f1"] = q["accuracy"], q["macro_f1"]
            if name in ctx.variant_files:
                metrics[f"{name}_size_mb"] = file_size_mb(ctx.run_dir / ctx.variant_files[name])
            done += 1
            if ctx.progress:
                ctx.progress("evaluate", done, total)
        ref = variants.get(config.reference)
        if ref is not None:
            ref_emb = ref.embed(test.texts)
            for name, model in variants.items():
                if name != config.reference:
                    cos = torch.nn.functional.cosine_similarity(ref_emb, model.embed(test.texts), dim=-1)
                    metrics[f"{name}_cos_mean"], metrics[f"{name}_cos_min"] = float(cos.mean()), float(cos.min())
                    metrics[f"{name}_agreement"] = float((torch.tensor(preds[name]) ==
                                                          torch.tensor(preds[config.reference])).float().mean())
                done += 1
                if ctx.progress:
                    ctx.progress("evaluate", done, total)
        costs = cost_side_by_side(variants, test.texts, repeats=config.repeats)
        for name, c in costs.items():
            metrics.update({f"{name}_{k}": v for k, v in c.items() if k != "peak_memory_mb"})
            if name in ctx.variant_files:
                metrics[f"{name}_peak_memory_mb"] = _served_memory_mb(ctx.run_dir / ctx.variant_files[name])
        if ctx.progress:
            ctx.progress("evaluate", total, total)
        ctx.write_json("predictions", "predictions.json", {"labels": test.labels, "predictions": preds})
        ctx.sections["machine"] = machine_facts()
        return StepResult(metrics=metrics)
