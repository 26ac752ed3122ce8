"""Step ``explain``: why the run's model answers as it does, on a few of its own test examples — feature
attributions with their completeness, how typical each input is by the run's OOD guard, the nearest training
examples — as one-page HTML files under ``explain/``, a report section, and ``model.explained`` ledger events
that the generated documents cite."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError
from nnforge.recipes.steps._base import STEPS, Preflight, RunContext, StepResult
from nnforge.recipes.steps.export import require_saved_model


@config_type("step.explain")
class ExplainStepConfig(Config):
    variant: str | None = Field(None, description="the variant to explain (default: the latest one saved)")
    examples: int = Field(3, ge=1, le=1000, description="test examples explained, spread evenly over the split")
    method: str = Field("integrated_gradients", description="a registered attribution method")
    neighbours: int = Field(3, ge=0, le=50, description="nearest training passages shown per example (text)")
    inside: bool = Field(True, description="char-LMs: a sparse autoencoder on the middle residual stream and the "
                                           "logit and tuned lens, in the report (the 'Inside the model' section)")
    sae_steps: int = Field(300, ge=1, le=100_000, description="the sparse autoencoder's training steps")

    @field_validator("method")
    @classmethod
    def _known(cls, v: str) -> str:
        from nnforge.explain.attribution import ATTRIBUTION_METHODS

        ATTRIBUTION_METHODS.get(v, where="explain.method")
        return v


@STEPS.register("explain")
class Explain:
    name: ClassVar[str] = "explain"
    Config: ClassVar[type[Config]] = ExplainStepConfig
    description: ClassVar[str] = "explain test predictions: attributions, typicality, nearest training examples"

    def preflight(self, plan: Preflight, config: Any) -> None:
        require_saved_model(plan, "explain")

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        from nnforge.explain.attribution import AttributionConfig, attribution_html
        from nnforge.ledger import atomic_write_text
        from nnforge.recipes.explain_run import explain_examples, input_sha256, pick_examples, record_explanations

        name = config.variant or next(reversed(ctx.variant_files), None)
        if name is None or name not in ctx.variants:
            raise ConfigError(f"explain: no saved variant {name!r}; the steps before it saved {sorted(ctx.variant_files)}")
        model = ctx.variants[name]
        dataset: Any = ctx.data.get("dataset") if isinstance(ctx.data, dict) else None
        splits = ctx.data if isinstance(ctx.data, dict) else {}
        test = ctx.recipe.data.test_split
        size = (len(splits["test"].texts) if "test" in splits and hasattr(splits["test"], "texts")
                else len(dataset.val) - int(model.config.block_size) if hasattr(dataset, "vocab")
                else len(dataset.splits[test][0]))
        indices = np.unique(np.linspace(0, size - 1, min(config.examples, size)).round().astype(int)).tolist()
        examples = pick_examples(model, splits, dataset, indices=indices, split=test)
        labels = list(ctx.model_spec.get("label_names") or []) or None
        embedder, bank = None, None
        if "train_embeddings" in ctx.shared:  # the evaluate step embedded the training passages already
            reference, bank = ctx.shared["train_embeddings"]
            embedder = ctx.variants.get(reference)
            bank = bank if embedder is not None else None
        results = explain_examples(model, examples, AttributionConfig(method=config.method), label_names=labels,
                                   vocab=getattr(dataset, "vocab", None), guard_dir=ctx.run_dir / "ood-guard",
                                   train=splits.get("train"), neighbours=config.neighbours,
                                   provenance={"run": ctx.run_id, "variant": name, "method": config.method},
                                   embedder=embedder, bank=bank)
        folder = ctx.run_dir / "explain"
        folder.mkdir(parents=True, exist_ok=True)
        pages: list[Path | None] = []
        rows = []
        for r in results:
            a, e = r["attribution"], r["example"]
            page = folder / f"{config.method}-{input_sha256(e.value)[:12]}.html"
            atomic_write_text(page, r["page"])
            ctx.record_file(f"explain:{page.name}", page)
            pages.append(page)
            true = (labels[e.label] if labels and e.label is not None and e.label < len(labels)
                    else None if e.label is None else str(e.label))
            rows.append({"source": e.source, "answer": a.target_label, "true": true,
                         "probability": a.probabilities[a.target], "completeness_error": a.completeness_error,
                         "typicality": r["typicality"], "page": str(page.relative_to(ctx.run_dir)),
                         "html": attribution_html(a), "neighbours": r["neighbours"]})
        events = record_explanations(ctx.ledger, results, used={"run": ctx.run_id, "variant": name}, run_id=ctx.run_id,
                                     pages=pages)
        if config.inside and hasattr(dataset, "vocab") and hasattr(model, "transformer"):
            _inside(ctx, model, dataset, config, name)
        errors = [x for x in (row["completeness_error"] for row in rows) if x is not None]
        ctx.sections["explain"] = {"variant": name, "method": config.method, "examples": rows,
                                   "events": len(events)}
        metrics = {"explain_examples": len(rows)}
        if errors:
            metrics["explain_completeness_error_max"] = max(errors)
        return StepResult(metrics=metrics, artifacts={"explain": str(folder)})


def _inside(ctx: RunContext, model: Any, corpus: Any, config: Any, variant: str) -> None:
    """A TopK sparse autoencoder (8x the width, k = 32) on the residual stream after the middle block, and the
    logit and tuned lens, on seeded batches of the corpus; the ``inside`` report section and two ledger events."""
    import torch

    from nnforge.explain.lens import TunedLensConfig, lens_report, train_tuned_lens
    from nnforge.explain.sae import SAEConfig, evaluate_sae, train_sae

    block = int(model.config.block_size)
    gen = torch.Generator().manual_seed(ctx.seed)
    train = [corpus.batch("train", 12, block, gen) for _ in range(40)]
    val = [corpus.batch("val", 12, block, gen) for _ in range(8)]
    site = f"residual.{max(1, int(model.config.n_layer) // 2)}"
    sae_config = SAEConfig(architecture="topk", expansion=8, k=32, steps=config.sae_steps, seed=ctx.seed)
    was = model.training
    model.eval()
    try:
        sae, _ = train_sae(model, sae_config, batches=train, site=site)
        ev = evaluate_sae(sae, model, val, site=site, decode=corpus.decode, top_features=6, examples=3)
        lens = lens_report(model, val, train_tuned_lens(model, train, TunedLensConfig(steps=60, seed=ctx.seed)))
    finally:
        model.train(was)
    sae_doc, lens_doc = ev.to_dict(), lens.to_dict()
    ctx.sections["inside"] = {"variant": variant, "sae": sae_doc, "sae_config": sae_config.model_dump(mode="json"),
                              "lens": lens_doc}
    common = {"run": ctx.run_id, "variant": variant}
    ctx.ledger.append_many([
        ("model.explained", {**common, "kind": "sparse-autoencoder", "method": "topk-sae", "site": site,
                             "settings": sae_config.model_dump(mode="json"),
                             "input": {"source": f"{len(val)} seeded validation batches"},
                             "figures": {k: sae_doc[k] for k in ("val_loss", "val_loss_with_sae", "loss_increase",
                                                                 "alive_fraction", "fvu", "l0")}},
         ctx.run_id, None),
        ("model.explained", {**common, "kind": "lens", "method": "logit-lens+tuned-lens",
                             "input": {"source": f"{len(val)} seeded validation batches"},
                             "figures": lens_doc.get("layers")}, ctx.run_id, None)])

