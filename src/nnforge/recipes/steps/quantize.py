"""Steps ``calibrate`` and ``quantize``: measure layer sensitivity and plan mixed precision; quantize a copy
of the current model and save it as its own variant."""

from __future__ import annotations

import copy
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator
from torch import nn

from nnforge.compress import (
    CALIBRATORS,
    FORMATS,
    W8A8Config,
    WeightOnlyConfig,
    load_transform_config,
    needs_calibration,
    quantize_,
)
from nnforge.compress.quantize.weight_only.config import Calibrator, Format, GroupSize
from nnforge.config import Config
from nnforge.errors import ConfigError
from nnforge.recipes.steps._base import STEPS, Preflight, RunContext, StepResult
from nnforge.recipes.steps._calibration import calibration_batches

_SCHEMES = ("w8a8", "mixed")  # besides every registered weight format


def _scheme(name: str) -> str:
    if name not in FORMATS and name not in _SCHEMES:
        known = [*FORMATS.names(), *_SCHEMES]
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown scheme {name!r}{hint}; a registered weight format or w8a8 or mixed: "
                         f"{', '.join(known)} (any other registered method: config: {{type: ..., data: ...}})")
    return name


Scheme = Annotated[str, AfterValidator(_scheme)]
# the options a scheme spells out, which a full ``config`` already holds
_SCHEME_OPTIONS = ("scheme", "group_size", "symmetric", "calibrator", "embeddings", "embedding_fmt", "activations",
                   "smoothing")


class QuantizeStepConfig(Config):
    """Options of the ``quantize`` step.

    ``scheme`` picks a registered weight format, or ``w8a8`` (activations too) or ``mixed`` (the plan of an
    earlier ``calibrate`` step). ``group_size``, ``symmetric`` and ``calibrator`` default per format: one
    scale per channel, symmetric, round to nearest, except formats that take zero points (int4/int3/int2):
    group 64, asymmetric, HQQ. ``config`` instead names any registered quantization method with all its
    options, serialised as configs are: ``{type: w8a8, data: {activations: static}}`` (``version`` optional).
    """

    scheme: Scheme = "int8"
    config: dict[str, Any] | None = Field(None, description="any registered quantization method: {type, data}")
    group_size: GroupSize | Literal["default"] = "default"
    symmetric: bool | None = None
    calibrator: Calibrator | None = None
    embeddings: bool = True
    embedding_fmt: Format = "int8"
    calibration_batches: int = Field(16, ge=1, le=1000)
    activations: Literal["dynamic", "static"] = "dynamic"
    smoothing: Literal["none", "smoothquant"] = "smoothquant"
    variant: str | None = Field(None, description="name of the saved variant; default: the scheme")

    @model_validator(mode="after")
    def _check(self) -> QuantizeStepConfig:
        self.qconfig()  # every combination is validated when the recipe is read
        return self

    def qconfig(self, plan: dict[str, str] | None = None) -> Config:
        """The transform config this step applies."""
        given = self.model_fields_set
        if self.config is not None:
            spelled = [name for name in _SCHEME_OPTIONS if name in given]
            if spelled:
                raise ConfigError(f"quantize: {spelled[0]} does not go with config (the config holds every option "
                                  "of its method; put it in config.data)")
            return load_transform_config(self.config, "quantize", where="config")
        if self.scheme == "w8a8":
            # W8A8 is int8, one scale per output channel, symmetric, Linear layers only: options it has no use
            # for are refused by name rather than silently dropped (calibrator: gptq was ignored)
            if self.calibrator not in (None, "rtn", "gptq"):
                raise ConfigError(f"quantize: calibrator {self.calibrator!r} does not apply to scheme w8a8 "
                                  "(it rounds its int8 weights with 'rtn' or 'gptq')")
            if self.group_size not in ("default", None):
                raise ConfigError(f"quantize: group_size {self.group_size} does not apply to scheme w8a8 (its int8 "
                                  "weights have one scale per output channel; leave group_size out)")
            if self.symmetric is False:
                raise ConfigError("quantize: symmetric false does not apply to scheme w8a8 (its int8 weights "
                                  "are symmetric)")
            for name in ("embeddings", "embedding_fmt"):
                if name in given and (name != "embeddings" or self.embeddings):
                    raise ConfigError(f"quantize: {name} does not apply to scheme w8a8 (it quantizes Linear "
                                      "layers only; embeddings stay in floating point)")
            return W8A8Config(activations=self.activations, smoothing=self.smoothing,
                              calibrator=self.calibrator or "rtn")
        for name in ("activations", "smoothing"):
            if name in given:
                raise ConfigError(f"quantize: {name} applies to scheme w8a8 only; scheme {self.scheme} "
                                  "quantizes weights only")
        fmt = "int4" if self.scheme == "mixed" else self.scheme
        low = FORMATS.get(fmt).asymmetric_ok  # formats with zero points default to groups of 64, asymmetric, HQQ
        group = (64 if low else None) if self.group_size == "default" else self.group_size
        symmetric = (not low) if self.symmetric is None else self.symmetric
        calibrator = self.calibrator or ("hqq" if low else "rtn")
        modules = ("linear", "embedding") if self.embeddings else ("linear",)
        return WeightOnlyConfig(fmt=fmt, group_size=group, symmetric=symmetric, calibrator=calibrator,
                                modules=modules, embedding_fmt=self.embedding_fmt, plan=plan or {})


@STEPS.register("quantize")
class Quantize:
    name: ClassVar[str] = "quantize"
    Config: ClassVar[type[Config]] = QuantizeStepConfig
    description: ClassVar[str] = ("quantize a copy of the model: int8 … binary weights, W8A8, a mixed plan, or any "
                                  "registered method")

    def preflight(self, plan: Preflight, config: Any) -> None:
        """A mixed scheme follows a calibrate step with a budget; the model has modules the method quantizes;
        every module a plan names exists."""
        if config.scheme == "mixed" and config.config is None:
            mine = next((i for i, s in enumerate(plan.recipe.steps) if s.config is config), len(plan.recipe.steps))
            if not any(s.name == "calibrate" and s.config.budget is not None for s in plan.recipe.steps[:mine]):
                raise ConfigError("scheme 'mixed' needs a 'calibrate' step with a budget before it (e.g. "
                                  "- calibrate: {budget: 4})")
        qcfg = config.qconfig({})
        check_targets(plan.model, qcfg)
        if needs_calibration(qcfg):
            check_calibration_data(plan, f"quantize ({qcfg.type_name})")

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        if "fp32" not in ctx.variants:  # no training before: the base model is the fp32 reference
            ctx.save_model("fp32", ctx.model, {**ctx.model_spec, "transforms": []})
        start = ctx.shared.get("compress_base", "fp32")  # after a prune step: its pruned variant (prune, then quantize)
        base = ctx.variants[start]
        plan = None
        if config.scheme == "mixed":
            plan = ctx.shared.get("mixed_plan")
            if plan is None:
                from nnforge.errors import StepFailedError

                raise StepFailedError("scheme 'mixed' needs a 'calibrate' step with a budget before it")
        qcfg = config.qconfig(plan)
        model = copy.deepcopy(base)
        inputs: dict[str, Any] = {}
        if needs_calibration(qcfg):
            batches, forward = calibration_batches(ctx, config.calibration_batches)
            inputs = {"calibration": batches, "forward": forward}
        progress = ctx.progress
        report = quantize_(model, qcfg, **inputs,
                           progress=(lambda d, t: progress("quantize", d, t)) if progress else None)
        variant = config.variant or (qcfg.type_name if config.config is not None else config.scheme)
        variant = variant if config.variant or start == "fp32" else f"{start}-{variant}"
        spec = {**ctx.variant_specs[start],
                "transforms": [*ctx.variant_specs[start].get("transforms", []), qcfg.to_dict()]}
        ctx.save_model(variant, model, spec)
        ctx.model = model
        ctx.sections.setdefault("quantize", {})[variant] = report.to_dict()
        errors = [c.error for c in report.changed]
        return StepResult(
            metrics={f"{variant}_modules_quantized": len(report.changed),
                     f"{variant}_modules_skipped": len(report.skipped),
                     f"{variant}_max_weight_rel_error": max(errors) if errors else 0.0},
            details={"skipped": report.skipped[:50]},
        )


_KINDS = {"linear": (nn.Linear,), "embedding": (nn.Embedding,), "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d)}


def check_targets(model: nn.Module, qcfg: Config) -> None:
    """The model has a module the quantization config applies to, and every module its plan names.

    Raises:
        ConfigError: naming the option and what the model has.
    """
    kinds = tuple(getattr(qcfg, "modules", ("linear",)))
    types = tuple(t for k in kinds for t in _KINDS.get(k, ()))
    if types and not any(isinstance(m, types) for m in model.modules()):
        raise ConfigError(f"quantize: the model has no {'/'.join(kinds)} module to quantize "
                          f"({type(model).__name__}); quantization targets: {list(kinds)}")
    names = {n for n, _ in model.named_modules()}
    unknown = sorted(set(getattr(qcfg, "plan", None) or {}) - names)
    if unknown:
        raise ConfigError(f"quantize: plan names modules {unknown[:5]} the model does not have")


def check_calibration_data(plan: Preflight, what: str) -> None:
    """Calibration batches can be drawn from the run's data (what ``calibration_batches`` reads)."""
    from nnforge.data import ArrayClassification, CharCorpus

    texts = hasattr(plan.model, "tokenize") and hasattr(plan.splits.get("train"), "texts")
    dataset = plan.splits.get("dataset")
    if not (texts or isinstance(dataset, (CharCorpus, ArrayClassification))):
        raise ConfigError(f"{what} needs calibration data: a text classifier on text data, a character corpus or "
                          f"an array dataset; dataset {plan.recipe.data.dataset!r} with a {type(plan.model).__name__} "
                          "is none of these")


def _candidate(name: str) -> str:
    return name if name == "fp32" else _registered(FORMATS, name)


def _data_free(name: str) -> str:
    if _registered(CALIBRATORS, name) and CALIBRATORS.get(name).needs_data:
        raise ValueError(f"calibrator {name!r} needs calibration statistics; the sensitivity scan takes a "
                         "data-free one: " + ", ".join(n for n, c in CALIBRATORS.items() if not c.needs_data))
    return name


def _registered(registry: Any, name: str) -> str:
    if name not in registry:
        raise ValueError(registry.unknown_message(name))
    return name


Candidate = Annotated[str, AfterValidator(_candidate)]
DataFreeCalibrator = Annotated[str, AfterValidator(_data_free)]


class CalibrateStepConfig(Config):
    """Options of the ``calibrate`` step: which formats to measure per layer, and an optional budget."""

    candidates: tuple[Candidate, ...] = ("int8", "int4", "int2")
    group_size: GroupSize = 64
    calibrator: DataFreeCalibrator = "rtn"
    batches: int = Field(16, ge=1, le=1000)
    budget: float | None = Field(None, gt=0, description="average bits per weight (or bytes / ms, see budget_kind)")
    budget_kind: Literal["avg_bits", "bytes", "latency_ms"] = "avg_bits"


@STEPS.register("calibrate")
class Calibrate:
    name: ClassVar[str] = "calibrate"
    Config: ClassVar[type[Config]] = CalibrateStepConfig
    description: ClassVar[str] = "per-layer sensitivity per format on calibration data; a mixed-precision plan"

    def preflight(self, plan: Preflight, config: Any) -> None:
        """The model has Linear modules to measure, and calibration data can be drawn."""
        check_targets(plan.model, WeightOnlyConfig(modules=("linear",)))
        check_calibration_data(plan, "calibrate")

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        from nnforge.compress.quantize.mixed import allocate_bits, layer_sensitivity

        batches, forward = calibration_batches(ctx, config.batches)
        sens = layer_sensitivity(ctx.model, config.candidates, batches, forward=forward, group_size=config.group_size,
                                 symmetric=False, calibrator=config.calibrator,
                                 measure_latency=config.budget_kind == "latency_ms")
        doc: dict[str, Any] = {"layers": {n: [{"fmt": o.fmt, "error": o.error, "bits": o.bits, "latency_ms": o.latency_ms}
                                             for o in opts] for n, opts in sens.items()}}
        metrics: dict[str, Any] = {"calibrate_layers": len(sens)}
        if config.budget is not None:
            plan = allocate_bits(sens, config.budget, config.budget_kind)
            ctx.shared["mixed_plan"] = plan.formats
            doc["plan"] = plan.to_dict()
            metrics.update(mixed_avg_bits=plan.avg_bits, mixed_total_error=plan.total_error)
        ctx.write_json("sensitivity", "sensitivity.json", doc)
        ctx.sections["calibrate"] = doc
        return StepResult(metrics=metrics)
