"""Step ``export``: a variant of the run's model as a verified ONNX file or web page (``nnforge export`` inside the
recipe), verified against PyTorch on the run's test data, its files hashed into the ledger."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError
from nnforge.recipes.steps._base import STEPS, Preflight, RunContext, StepResult

SAVES_MODEL = ("train", "finetune", "quantize", "prune", "upcycle", "federate")


def require_saved_model(plan: Preflight, step: str) -> None:
    """A ConfigError unless a step before ``step`` saves a model (export and explain read one)."""
    names = [s.name for s in plan.recipe.steps]
    if not any(n in SAVES_MODEL for n in names[: names.index(step)]):
        raise ConfigError(f"no step before it saves a model to {step} (steps: {names}); put {step} after one of "
                          f"{sorted(SAVES_MODEL)}")


@config_type("step.export")
class ExportStepConfig(Config):
    variant: str | None = Field(None, description="the variant to export (default: the latest one saved)")
    format: Literal["onnx", "web"] = "onnx"
    int8_matmul: Literal["rowwise", "nbits", "integer"] | None = Field(
        None, description="how int8 layers are written (default: rowwise, which the browser runs too)")
    verify: int = Field(64, ge=1, le=100_000, description="real test inputs the export is verified on")


@STEPS.register("export")
class Export:
    name: ClassVar[str] = "export"
    Config: ClassVar[type[Config]] = ExportStepConfig
    description: ClassVar[str] = "export a variant as ONNX or a web page, verified against PyTorch on the test data"

    def preflight(self, plan: Preflight, config: Any) -> None:
        """A step before it must save a model; the web format takes classifiers only."""
        require_saved_model(plan, "export")
        if config.format == "web":
            from nnforge.models import family_of

            if family_of(plan.model) == "char-lm":
                raise ConfigError("format web writes a page that classifies; a char-lm generates (export it as onnx)")

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        from nnforge.deploy.export import ExportConfig
        from nnforge.recipes.export_run import export_variant

        name = config.variant or next(reversed(ctx.variant_files), None)
        if name is None or name not in ctx.variants:
            raise ConfigError(f"export: no saved variant {name!r} to export; the steps before it saved "
                              f"{sorted(ctx.variant_files)} (export comes after train, finetune or quantize)")
        options = {"int8_matmul": config.int8_matmul} if config.int8_matmul is not None else {}
        folder = ctx.run_dir / "export" / f"{name}-{config.format}"
        dataset = ctx.data.get("dataset") if isinstance(ctx.data, dict) else None
        result, event = export_variant(
            ctx.variants[name], folder, recipe=ctx.recipe, splits=ctx.data, dataset=dataset,
            config=ExportConfig(format=config.format, **options), verify=config.verify,
            label_names=list(ctx.model_spec.get("label_names") or []),
            source={"run": ctx.run_id, "variant": name}, run_id=ctx.run_id, ledger=ctx.ledger)
        for rel in result.files:
            ctx.record_file(f"export:{name}-{config.format}:{rel}", folder / rel)
        check = event["verification"]
        prefix = f"{name}_{config.format}_export"
        return StepResult(metrics={f"{prefix}_argmax_agreement": check["argmax_agreement"],
                                   f"{prefix}_rel_logit_diff": check["rel_logit_diff"]},
                          artifacts={f"export:{name}-{config.format}": str(folder)})
