"""Pruning a finished run: the ``prune`` step applied to one of its saved variants, the result added to the run.

``nnforge prune RUN`` calls :func:`prune_run`. The run's files are checked against its ledger first; its
recipe's data are loaded again (calibration batches, the FLOP count and the batch-1 timing read them); every
option is checked before anything is written. The pruned variant is saved into the run folder (hashed into
the ledger as ``artifact.written``), its decisions are recorded as the step records them (``prune.layer``,
``prune.applied``), it is added to the run's variants (the final variant stays the one the recipe produced)
and its report section, and the report is rendered again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnforge import runs
from nnforge.errors import ConfigError
from nnforge.ledger import Ledger
from nnforge.recipes.steps._base import Preflight, ProgressFn, RunContext

__all__ = ["prune_run", "PrunedVariant"]


@dataclass(frozen=True)
class PrunedVariant:
    """What :func:`prune_run` added to a run: the variant, its weights file, its figures, the new report."""

    run_dir: Path
    variant: str
    base: str
    file: Path
    report: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def prune_run(run: str | os.PathLike[str], config: Any, *, ledger: Ledger, runs_dir: str | os.PathLike[str] = "runs",
              progress: ProgressFn | None = None, allow_modified: bool = False) -> PrunedVariant:
    """Prune a variant of a finished run (``config.base``, default fp32) as the ``prune`` step ``config`` says.

    Args:
        config: a :class:`~nnforge.recipes.steps.prune.PruneStepConfig`.
        ledger: the ledger that recorded the run (it receives the new events).

    Raises:
        ConfigError, DataError: bad input, found before anything is written (exit 2 in the CLI).
        IntegrityError: the run's files differ from what its ledger recorded (unless ``allow_modified``).
    """
    from nnforge.govern.report import write_report
    from nnforge.recipes.runner import load_data, model_task
    from nnforge.recipes.runs import load_run
    from nnforge.recipes.schema import parse_recipe
    from nnforge.recipes.steps.prune import COMPRESS_BASE, Prune

    r = load_run(run, runs_dir, ledger=ledger.location, allow_modified=allow_modified, use="prune",
                 actor=ledger.actor)
    ledger.run_events(r.run_id)  # the ledger must be the run's: the report is rendered from it
    base = config.base or ("fp32" if "fp32" in r.variants else r.config.get("final_variant"))
    if base not in r.variants:
        raise ConfigError(f"run {r.path} has no variant {base!r} to prune; it has {sorted(r.variants)}")
    variant = config.variant_name()
    if variant in r.variants:
        raise ConfigError(f"run {r.path} already has a variant {variant!r}; name the new one with --variant")
    source = r.config.get("recipe_source") or ""
    recipe = parse_recipe(yaml.safe_load(source) if source else r.config.get("recipe"), source=source)
    splits, dataset = load_data(recipe)
    model = r.model(base)
    step = Prune()
    step.preflight(Preflight(recipe, splits, dataset, model, model_task(recipe.model.model_dump(exclude_none=True))),
                   config.replace(base=None))  # the base is one of the run's variants, checked above
    from nnforge.models.checkpoint import load_weights

    _, spec = load_weights(r.variant_file(base))
    ctx = RunContext(run_id=r.run_id, run_dir=r.path, recipe=recipe, ledger=ledger, seed=recipe.seed, data=splits,
                     model=model, model_spec={k: v for k, v in spec.items() if k != "transforms"},
                     variants={base: model}, variant_specs={base: spec}, variant_files={base: r.variants[base]},
                     shared={COMPRESS_BASE: base}, progress=progress)
    result = step.run(ctx, config.replace(base=None))
    runs.update_config(r.path, variants={**r.variants, variant: ctx.variant_files[variant]})
    sections = runs.read_sections(r.path)
    sections.setdefault("prune", {})[variant] = ctx.sections["prune"][variant]
    runs.write_sections(r.path, sections)
    report = write_report(r.path, ledger)
    return PrunedVariant(Path(r.path), variant, base, Path(r.path) / ctx.variant_files[variant], report,
                         result.metrics)
