"""Step ``prune``: prune a copy of the model with any registered pruning method, save it as its own variant,
and record every pruning decision in the ledger.

```yaml
steps:
  - train: {train: {max_steps: 2000}}
  - prune: {config: {type: unstructured, data: {sparsity: 0.5}}, exclude: [lm_head]}
  - quantize: {scheme: int8}   # quantizes the pruned variant: prune, then quantize, in one recipe
```

``config`` names any method registered with ``register_transform(..., kind="prune")`` and its options, as
configs are serialised (``{type, data}``; ``version`` optional). The step prunes the newest pruned variant of
an earlier ``prune`` step, else the fp32 model (``base`` names another), saves the result as a variant whose
spec lists every transform applied since the base model (so ``rebuild`` reloads it), and makes it the model
that later ``quantize`` steps start from.

The ledger receives one ``prune.layer`` event per module the method changed (shapes, parameters and non-zero
weights before and after, sparsity, the method's criterion and pattern, bytes as stored, FLOPs as executed,
the layer's speed verdict) and one ``prune.applied`` event for the variant (totals, the modules left alone
and why, the batch-1 latency of the pruned model against its base, timed interleaved). The run report's
pruning section is rendered from those events.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from nnforge.compress import load_transform_config, needs_calibration, prune_
from nnforge.config import Config
from nnforge.errors import ConfigError, StepFailedError
from nnforge.recipes.steps._base import STEPS, Preflight, RunContext, StepResult
from nnforge.recipes.steps._calibration import calibration_batches
from nnforge.recipes.steps._prune_record import (
    count_flops,
    layer_decisions,
    model_flops,
    module_filter,
    speed_verdict_b1,
    totals,
    unmatched_patterns,
)
from nnforge.recipes.steps.quantize import check_calibration_data
from nnforge.recipes.steps.train import Train, TrainStepConfig

__all__ = ["PruneStepConfig", "Prune", "COMPRESS_BASE"]

COMPRESS_BASE = "compress_base"
"""``ctx.shared`` key: the variant later ``prune`` and ``quantize`` steps start from (set by a prune step)."""


class PruneStepConfig(Config):
    """Options of the ``prune`` step.

    ``config`` is any registered pruning method with its options: ``{type: unstructured, data: {sparsity:
    0.5}}``. ``modules`` and ``exclude`` are name patterns (``fnmatch``: ``blocks.*.mlp.*``, ``lm_head``); a
    pattern that names a module also names everything inside it. ``base`` is the variant to prune (default:
    the newest pruned variant, else fp32). ``latency_repeats`` interleaved batch-1 timings of the pruned model
    against its base give the model's speed verdict (0: not timed). ``recovery`` trains the pruned model with the
    ``train`` step's options (character corpora and array datasets), weights the method zeroed held at zero.
    """

    config: dict[str, Any] = Field(description="a registered pruning method: {type, data}")
    modules: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    calibration_batches: int = Field(16, ge=1, le=1000)
    base: str | None = Field(None, description="variant to prune; default: the newest pruned one, else fp32")
    variant: str | None = Field(None, description="name of the saved variant; default: pruned-<method>")
    latency_repeats: int = Field(20, ge=0, le=1000)
    recovery: TrainStepConfig | None = Field(None, description="recovery training of the pruned model (the train "
                                             "step's options); zeros the method left stay zero")

    @model_validator(mode="after")
    def _check(self) -> PruneStepConfig:
        self.pconfig()  # the method and its options are validated when the recipe is read
        return self

    def pconfig(self) -> Config:
        """The pruning config this step applies."""
        return load_transform_config(self.config, "prune", where="config")

    def variant_name(self) -> str:
        name = self.pconfig().type_name
        return self.variant or (name if name.startswith("prune") else f"pruned-{name}")


@STEPS.register("prune")
class Prune:
    name: ClassVar[str] = "prune"
    Config: ClassVar[type[Config]] = PruneStepConfig
    description: ClassVar[str] = ("prune a copy of the model with any registered pruning method (magnitude, Wanda, "
                                  "SparseGPT, N:M, structured); every decision in the ledger")

    def preflight(self, plan: Preflight, config: Any) -> None:
        """Every name pattern matches a module; the filter leaves a module with a weight matrix to prune; a
        ``base`` is a variant an earlier step saves; a method that needs data can draw calibration batches."""
        bad = unmatched_patterns(plan.model, (*config.modules, *config.exclude))
        if bad:
            names = [n for n, _ in plan.model.named_modules() if n][:8]
            raise ConfigError(f"prune: pattern {bad[0]!r} matches no module of the model "
                              f"({type(plan.model).__name__}: {', '.join(names)}, …)")
        admit = module_filter(config.modules, config.exclude)
        if not any(_has_matrix(m) and (admit is None or admit(n, m)) for n, m in plan.model.named_modules() if n):
            raise ConfigError(f"prune: no module with a weight matrix is left to prune in {type(plan.model).__name__} "
                              f"(modules {list(config.modules)}, exclude {list(config.exclude)})")
        if config.base is not None and config.base != "fp32":
            mine = next((i for i, s in enumerate(plan.recipe.steps) if s.config is config), len(plan.recipe.steps))
            earlier = [s.config.variant_name() for s in plan.recipe.steps[:mine] if s.name == "prune"]
            if config.base not in earlier:
                raise ConfigError(f"prune: base {config.base!r} is not a variant an earlier prune step saves "
                                  f"(fp32{''.join(', ' + e for e in earlier)})")
        pcfg = config.pconfig()
        if needs_calibration(pcfg):
            check_calibration_data(plan, f"prune ({pcfg.type_name})")
        if _prunes_during_training(pcfg):
            end = getattr(pcfg, "end_step", 0)
            if config.recovery is None or config.recovery.train.max_steps < end:
                raise ConfigError(f"prune: {pcfg.type_name} prunes while the model trains, in the step's recovery "
                                  f"training: give recovery: {{train: {{max_steps: N}}}} with N >= its end_step "
                                  f"({end})")
        if config.recovery is not None:
            Train().preflight(plan, config.recovery)
        at = next((i for i, s in enumerate(plan.recipe.steps) if s.config is config), None)
        later = [s.name for s in plan.recipe.steps[at + 1:]] if at is not None else []
        for name in ("train", "finetune"):
            if name in later:
                raise ConfigError(f"prune: a {name} step after a prune step would train the pruned model and save it as "
                                  "the fp32 variant (its spec has no pruning): train before pruning, and give the "
                                  "prune step recovery: {train: {max_steps: 300}} to train the pruned model")

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        base_name = config.base or ctx.shared.get(COMPRESS_BASE, "fp32")
        if base_name == "fp32" and "fp32" not in ctx.variants:  # no training before: the model as built
            ctx.save_model("fp32", ctx.model, {**ctx.model_spec, "transforms": []})
        if base_name not in ctx.variants:
            raise StepFailedError(f"prune: no variant {base_name!r} to prune; this run has {sorted(ctx.variants)}")
        base = ctx.variants[base_name]
        pcfg = config.pconfig()
        variant = config.variant_name()
        model = copy.deepcopy(base)
        batches: list[Any] = []
        forward: Any = None
        try:  # a data-free method still runs one batch: the FLOP count and the batch-1 timing read it
            batches, forward = calibration_batches(ctx, config.calibration_batches if needs_calibration(pcfg) else 1)
        except StepFailedError:
            if needs_calibration(pcfg):
                raise
        inputs: dict[str, Any] = {"calibration": batches, "forward": forward} if needs_calibration(pcfg) else {}
        progress = ctx.progress
        recovered: dict[str, Any] = {}
        if _prunes_during_training(pcfg):  # gradual: it prunes while the recovery training runs
            def train(m: nn.Module, callbacks: list[Any]) -> None:
                recovered.update(_recover(ctx, m, config.recovery, callbacks))

            inputs["train"] = train
        report = prune_(model, pcfg, module_filter(config.modules, config.exclude), **inputs,
                        progress=(lambda d, t: progress("prune", d, t)) if progress else None)
        if config.recovery is not None and not _prunes_during_training(pcfg):
            recovered = _recover(ctx, model, config.recovery)
        # measured before anything is saved: a failure here leaves no weights file the ledger would vouch for
        example = batches[0] if batches else None
        flops = (count_flops(base, example, forward), count_flops(model, example, forward)) if example is not None \
            else ({}, {})
        layers = layer_decisions(base, model, report, *flops)
        latency = speed_verdict_b1(model, base, example, forward, config.latency_repeats) if example is not None \
            else None
        base_spec = ctx.variant_specs[base_name]
        path = ctx.save_model(variant, model, {**base_spec, "transforms": [*base_spec.get("transforms", []),
                                                                           report.config]})
        ctx.model = model
        ctx.shared[COMPRESS_BASE] = variant
        summary = {"variant": variant, "base": base_name, "method": report.method, "config": report.config,
                   "filter": {"modules": list(config.modules), "exclude": list(config.exclude)},
                   **totals(layers, report), "file_bytes": path.stat().st_size,
                   "base_file_bytes": (ctx.run_dir / ctx.variant_files[base_name]).stat().st_size,
                   "latency_b1": latency,
                   "skipped": [*({"module": n, "reason": r} for n, r in report.skipped),
                               *_left_out(base, config)]}
        model_flops(summary, *flops)
        record_decisions(ctx, summary, layers)
        ctx.sections.setdefault("prune", {})[variant] = {**summary, "layers": layers}
        summary["recovery"] = recovered or None
        return StepResult(metrics={**_metrics(variant, summary), **{f"{variant}_recovery_{k}": v
                                                                   for k, v in recovered.items()}},
                          details={"skipped": report.skipped[:50]})


def record_decisions(ctx: RunContext, summary: dict[str, Any], layers: list[dict[str, Any]]) -> None:
    """One ``prune.layer`` event per changed module, then the variant's ``prune.applied`` event."""
    for layer in layers:
        ctx.ledger.append("prune.layer", {"variant": summary["variant"], "method": summary["method"], **layer},
                          run=ctx.run_id)
    ctx.ledger.append("prune.applied", summary, run=ctx.run_id)


def _metrics(variant: str, s: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {f"{variant}_modules_pruned": s["modules"], f"{variant}_modules_skipped": len(s["skipped"]),
                           f"{variant}_sparsity": s["sparsity"], f"{variant}_params_ratio": s["params_ratio"],
                           f"{variant}_file_ratio": s["file_bytes"] / max(s["base_file_bytes"], 1)}
    if s.get("flops_ratio") is not None:
        out[f"{variant}_flops_ratio"] = s["flops_ratio"]
    if s.get("latency_b1"):
        out[f"{variant}_speedup_b1"] = s["latency_b1"]["speedup"]
        out[f"{variant}_speedup_b1_ci"] = list(s["latency_b1"]["speedup_ci"])
    return out


class _Recovery(Train):
    """The ``train`` step on the pruned model: the zeros pruning left are put back after every optimizer step, and
    nothing is saved (the prune step saves the recovered model as its variant)."""

    name: ClassVar[str] = "prune-recovery"

    def __init__(self, model: nn.Module, extra: list[Any] | None = None) -> None:
        self.masks = [(p, p.detach() != 0) for p in model.parameters() if p.dim() >= 2 and bool((p == 0).any())]
        self.extra = list(extra or [])  # a method pruning during training (gradual) brings its callback

    def callbacks(self, config: Any) -> list[Any]:
        from nnforge.train import Event, on

        def keep_zeros(state: Any) -> None:
            with torch.no_grad():
                for p, mask in self.masks:
                    p.mul_(mask)

        return [on(Event.STEP_END, keep_zeros), *self.extra]

    def save(self, ctx: RunContext, config: Any) -> None:
        return None


def _prunes_during_training(pcfg: Config) -> bool:
    """A method that prunes while the model trains (``prunes_during_training``: gradual) instead of before."""
    return bool(getattr(type(pcfg), "prunes_during_training", False))


def _recover(ctx: RunContext, model: nn.Module, config: Any, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train the pruned ``model`` in place as ``config`` (the train step's options) says, with the extra
    ``callbacks``; its figures."""
    current = ctx.model
    ctx.model = model
    try:
        result = _Recovery(model, callbacks).run(ctx, config)
    finally:
        ctx.model = current
        ctx.sections.pop(_Recovery.name, None)
    return {k.removeprefix("train_"): v for k, v in result.metrics.items() if isinstance(v, (int, float))}


def _left_out(model: nn.Module, config: Any) -> list[dict[str, str]]:
    """The modules with a weight matrix that the step's ``modules`` / ``exclude`` patterns keep from the method."""
    admit = module_filter(config.modules, config.exclude)
    if admit is None:
        return []
    return [{"module": n, "reason": "left out by the step's modules/exclude patterns: not pruned"}
            for n, m in model.named_modules() if n and _has_matrix(m) and not admit(n, m)]


def _has_matrix(module: nn.Module) -> bool:
    w = module._parameters.get("weight")
    return w is not None and w.dim() >= 2
