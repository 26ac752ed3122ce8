"""Step ``search``: search hyperparameters, architectures or any recipe value on Optuna; each trial runs the
``trial_steps`` as a run of its own; the best trial's model becomes the run's model.

```yaml
model: {architecture: digits-mlp}
data: {dataset: digits}
steps:
  - search:
      space:
        model.options.hidden: {kind: categorical, choices: [[32], [64, 32], [128, 64]]}
        steps[0].optimizer_options.lr: {kind: float, low: 0.001, high: 0.03, log: true}
      objectives: [{metric: val_accuracy, direction: maximize}, {metric: latency_b1_ms}]
      constraints: ["size_mb <= 1"]
      sampler: nsga2
      trials: 12
      trial_steps:
        - train: {batch_size: 64, train: {max_steps: 200, eval_every: 50}}
  - report
```

Options: every field of :class:`nnforge.search.SearchConfig` (``space``, ``objectives``, ``constraints``,
``sampler``, ``pruner``, ``trials``, ``timeout_s``, ``seed``, ``study_name``, ``storage``, …) plus
``trial_steps`` (the steps each trial runs; paths ``steps[i]…`` in the space address them), ``workers``
(processes sharing the study), ``latency_repeats`` (timed batch-1 calls per trial) and ``best_recipes`` (how
many best trials are written as recipes).

Before anything is written the step checks that every path of the space is one the trial recipe can take
(each end of its range, each choice), that the trial steps pass their own preflight, and that every objective
and constraint names a metric a trial produces (the trial steps' metrics and ``measure_model``'s). The study is
stored in the run folder's ``search.journal`` unless ``storage`` names a journal file or a ``postgresql://`` URL
(a study of the same name there resumes). The ledger receives ``search.started``, one ``search.trial`` per trial
(params, metrics, state, energy; each trial's own steps under its own run id) and ``search.finished`` (every
trial's state and feasibility, the best trials, importances, the recipes written). The best trials are written
as ``best-1.yaml`` … (``nnforge run best-1.yaml`` reruns the trial), and the best trial's saved variants become
the run's, so that later ``quantize``, ``evaluate`` or ``report`` steps work on it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from nnforge.config import Config
from nnforge.errors import ConfigError, StepFailedError
from nnforge.recipes.search_run import (
    RecipeTrial,
    check_space_paths,
    check_storage,
    trial_base_document,
    trial_document,
    trial_metric_names,
)
from nnforge.recipes.search_screen import ScreenOptions, check_screen, fit_recipe_screen
from nnforge.recipes.steps._base import STEPS, Preflight, RunContext, StepResult, run_preflight
from nnforge.search import SearchConfig

__all__ = ["SearchStepConfig", "Search"]

log = logging.getLogger(__name__)


class SearchStepConfig(SearchConfig):
    """Options of the ``search`` step: a :class:`~nnforge.search.SearchConfig` and what each trial runs."""

    trial_steps: list[Any] = Field(min_length=1, description="the steps each trial runs, as a recipe lists steps")
    workers: int = Field(1, ge=1, le=256, description="processes running trials on the study's storage")
    latency_repeats: int = Field(20, ge=1, le=10_000, description="timed batch-1 calls per trial (measure_model)")
    best_recipes: int = Field(3, ge=1, le=100, description="best trials written as ready-to-run recipes")
    screen: ScreenOptions | None = Field(None, description="fit a latency predictor on untrained candidates first and "
                                                           "skip trials predicted over the latency constraint")

    @model_validator(mode="after")
    def _check_trial_steps(self) -> SearchStepConfig:
        from nnforge.recipes.schema import _step_entry

        problems: list[str] = []
        for i, entry in enumerate(self.trial_steps):
            name, options, errs = _step_entry(i, entry)
            problems += [f"trial_{e}" for e in errs]
            if name is None:
                continue
            if name == "search":
                problems.append(f"trial_steps[{i}]: a trial cannot run a search step of its own")
            elif name not in STEPS:
                problems.append(f"trial_steps[{i}]: " + STEPS.unknown_message(name))
            else:
                try:
                    STEPS.get(name).Config.model_validate(options)
                except ValueError as exc:
                    problems.append(f"trial_steps[{i}] ({name}): {exc}".replace("\n", " "))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def search_config(self) -> SearchConfig:
        """The study's :class:`~nnforge.search.SearchConfig` (the step's own options left out)."""
        return SearchConfig.model_validate({k: getattr(self, k) for k in SearchConfig.model_fields})


def _check_sampler_and_pruner(config: Any) -> None:
    """Build the sampler and the pruner once, so that an option Optuna refuses is found before the run starts."""
    from nnforge.search import PRUNERS, SAMPLERS, SamplerContext

    SAMPLERS.get(config.sampler)(dict(config.sampler_options),
                                 SamplerContext(seed=config.seed, directions=config.directions, space=config.space))
    PRUNERS.get(config.pruner)(dict(config.pruner_options))


def _prune_metric(config: Any) -> str | None:
    """The training evaluation reported to the pruner: the first objective when it is a validation metric of the
    training loop (``val_loss``, ``val_accuracy``); otherwise none (nothing to compare before a trial ends)."""
    if config.pruner == "none":
        return None
    metric = config.objectives[0].metric
    return metric if metric.startswith("val_") else None


@STEPS.register("search")
class Search:
    name: ClassVar[str] = "search"
    Config: ClassVar[type[Config]] = SearchStepConfig
    description: ClassVar[str] = ("search hyperparameters, architectures or any recipe value on Optuna against "
                                  "measured latency, size, memory and energy; every trial in the ledger")

    def preflight(self, plan: Preflight, config: Any) -> None:
        """Every space path makes a valid trial recipe; the trial steps pass their preflight on the data and the
        model; every objective and constraint names a metric a trial produces."""
        from nnforge.recipes.schema import parse_recipe

        check_storage(config.storage)
        _check_sampler_and_pruner(config)
        base = trial_base_document(plan.recipe, config.trial_steps)
        check_space_paths(base, config.space, plan)
        trial = parse_recipe(trial_document(base, {}))
        try:
            run_preflight(Preflight(trial, plan.splits, plan.dataset, plan.model, plan.task), trial.steps)
        except ConfigError as exc:
            raise ConfigError(f"search: trial_{exc}") from None
        if config.pruner != "none" and _prune_metric(config) is None:
            raise ConfigError(f"search: pruner {config.pruner!r} compares trials by the first objective's values during "
                              f"training, but {config.objectives[0].metric!r} is measured only after it; put a training "
                              "evaluation first (val_loss, val_accuracy) or set pruner: none")
        if config.screen is not None:
            from nnforge.recipes.schema import _step_entry

            names = [_step_entry(i, e)[0] or "" for i, e in enumerate(config.trial_steps)]
            check_screen(config.space, names, config.parsed_constraints)
        known = trial_metric_names(config.trial_steps, plan)
        if known is None:
            return
        wanted = [("objective", o.metric) for o in config.objectives]
        wanted += [("constraint", c.metric) for c in config.parsed_constraints]
        for what, metric in wanted:
            if metric not in known:
                raise ConfigError(f"search: the {what} metric {metric!r} is not one a trial produces; it produces "
                                  f"{', '.join(sorted(known))}")

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        from nnforge.search import search

        scfg = config.search_config()
        if "study_name" not in config.model_fields_set:  # on a shared storage, the recipe names its study
            scfg = scfg.replace(study_name=ctx.recipe.name)
        storage = scfg.storage or str(ctx.run_dir / "search.journal")
        location = ctx.ledger.location
        base = trial_base_document(ctx.recipe, config.trial_steps)
        ctx.ledger.append("search.started", _started(scfg, config, storage), run=ctx.run_id)
        screen = None
        if config.screen is not None:
            screen = fit_recipe_screen(base, config.space, ctx.data, num_classes=ctx.model_spec.get("num_classes"),
                                       seed=scfg.seed or 0, limit_ms=check_screen(config.space, [], scfg.parsed_constraints),
                                       options=config.screen, progress=ctx.progress)
            ctx.ledger.append("search.screen", {**screen.summary(), "pairs": screen.measured}, run=ctx.run_id)
        trial_fn = RecipeTrial(base,
                               str((ctx.run_dir / "trials").resolve()),
                               location if "://" in location else os.path.abspath(location), ctx.run_id,
                               actor=ctx.ledger.actor, prune_metric=_prune_metric(scfg),
                               latency_repeats=config.latency_repeats,
                               progress=ctx.progress if config.workers == 1 else None,
                               screen_predictor=screen.predictor if screen else None,
                               screen_limit_ms=screen.limit_ms if screen else None)
        result = search(trial_fn, scfg, storage=storage, workers=config.workers,
                        progress=_progress(ctx, list(scfg.objectives)))
        best = _best(result, config.best_recipes)
        recipes = [_write_recipe(ctx, trial_fn, t, k) for k, t in enumerate(best, 1)]
        if best and best[0]["attrs"].get("trial_dir"):
            adopt_trial_model(ctx, Path(best[0]["attrs"]["trial_dir"]))
        elif best:  # a trial of the same study run by something other than a recipe search: no folder to adopt
            log.warning("search: the best trial %d has no trial folder; the run's model is left as it was",
                        best[0]["number"])
        finished = _finished(result, best, recipes)
        ctx.ledger.append("search.finished", finished, run=ctx.run_id)
        ctx.sections["search"] = {"study_name": result.study_name, "best": [t["number"] for t in best],
                                  "recipes": recipes, "screen": screen.summary() if screen else None}
        metrics = _metrics(result, best, scfg)
        if screen is not None:
            from nnforge.search.predictor import SCREENED_ATTR

            metrics["search_screen_median_abs_err"] = screen.median_abs_err
            metrics["search_screened"] = sum(1 for t in result.trials if t.attrs.get(SCREENED_ATTR))
        return StepResult(metrics=metrics, artifacts={f"best-{k}": r for k, r in enumerate(recipes, 1)})


# --- what the step records --------------------------------------------------------------------------------------

def _started(scfg: Any, config: Any, storage: str) -> dict[str, Any]:
    from nnforge.ledger import redact_url

    data = scfg.model_dump(mode="json")
    data.update(storage=redact_url(storage) if "://" in storage else storage, workers=config.workers, trial_steps=config.trial_steps,
                latency_repeats=config.latency_repeats)
    return data


def _best(result: Any, limit: int) -> list[dict[str, Any]]:
    """The best feasible complete trials as dicts, best first: for one objective the ``limit`` best, for several
    the Pareto front ordered by the first objective (at most ``limit``)."""
    if len(result.objectives) > 1:
        return [t.to_dict() for t in result.best[:limit]]
    sign = 1.0 if result.objectives[0].direction == "minimize" else -1.0
    ranked = [t for t in result.trials if t.state == "complete" and t.feasible and t.values is not None]
    ranked.sort(key=lambda t: (sign * t.values[0], t.number))
    return [t.to_dict() for t in ranked[:limit]]


def _write_recipe(ctx: RunContext, trial_fn: RecipeTrial, trial: dict[str, Any], k: int) -> str:
    """``best-<k>.yaml``: the trial recipe the trial ran, values set; ``nnforge run`` accepts it unchanged."""
    import yaml

    from nnforge.ledger import atomic_write_text

    doc = trial_fn.document(trial["number"], trial["params"])
    figures = ", ".join(f"{m} {v:.6g}" for m, v in sorted((trial.get("metrics") or {}).items())
                        if isinstance(v, int | float))
    head = (f"# Trial {trial['number']} (its run: {trial['attrs'].get('trial_run')}), best {k} of search run "
            f"{ctx.run_id}: run it again with\n"
            f"#   nnforge run best-{k}.yaml\n# params: {trial['params']}\n# measured: {figures}\n")
    path = ctx.run_dir / f"best-{k}.yaml"
    atomic_write_text(path, head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    ctx.record_file(f"best-{k}", path)
    return path.name


def adopt_trial_model(ctx: RunContext, trial_dir: Path) -> None:
    """Make a trial's saved variants the run's (re-saved into the run folder, hashed into its ledger) and its
    final variant the current model; the model spec becomes the trial's (its architecture options)."""
    from nnforge import runs
    from nnforge.models.checkpoint import load_weights
    from nnforge.recipes.runs import rebuild

    config = runs.read_config(trial_dir)
    variants = config.get("variants") or {}
    if not variants:
        raise StepFailedError(f"search: the best trial's run {trial_dir} saved no model")
    for variant, filename in variants.items():
        tensors, spec = load_weights(trial_dir / filename)
        ctx.save_model(variant, rebuild(spec, tensors), spec)
    final = config.get("final_variant") or next(reversed(variants))
    ctx.model = ctx.variants[final]
    first = ctx.variant_specs[next(iter(variants))]
    ctx.model_spec = {k: v for k, v in first.items() if k != "transforms"}


def _finished(result: Any, best: list[dict[str, Any]], recipes: list[str]) -> dict[str, Any]:
    data = result.to_dict()
    from nnforge.search.predictor import PREDICTED_ATTR, SCREENED_ATTR

    trials = [{**{k: t.get(k) for k in ("number", "state", "feasible", "values", "duration_s", "error")},
               **{k: t["attrs"][k] for k in (PREDICTED_ATTR, SCREENED_ATTR) if k in t.get("attrs", {})}}
              for t in data["trials"]]
    return {"study_name": data["study_name"], "storage": data["storage"], "counts": data["counts"], "trials": trials,
            "best": [{"number": t["number"], "params": t["params"], "metrics": t["metrics"],
                      "trial_run": t["attrs"].get("trial_run")} for t in best],
            "importances": data["importances"], "recipes": recipes}


def _metrics(result: Any, best: list[dict[str, Any]], scfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"search_trials": len(result.trials), "search_complete": result.count("complete"),
                           "search_pruned": result.count("pruned"), "search_failed": result.count("failed"),
                           "search_infeasible": sum(t.state == "complete" and t.feasible is False
                                                    for t in result.trials)}
    if best:
        out["search_best_trial"] = best[0]["number"]
        for o in scfg.objectives:
            value = (best[0].get("metrics") or {}).get(o.metric)
            if isinstance(value, int | float):
                out[f"search_best_{o.metric}"] = value
    return out


def _progress(ctx: RunContext, objectives: list[Any]) -> Any:
    """The study's progress for the run's progress callback: trials finished of the total; a callback that also
    has ``describe(task, text)`` gets the best value so far and the pruned and failed counts."""
    if ctx.progress is None:
        return None
    progress = ctx.progress
    describe = getattr(progress, "describe", None)

    def update(snap: Any) -> None:
        progress("trials", snap.finished, snap.total)
        if describe is not None:
            best = snap.best[0].metrics if snap.best else {}
            first = ", ".join(f"{o.metric} {best[o.metric]:.4g}" for o in objectives if o.metric in best)
            front = f" (front of {len(snap.best)})" if len(objectives) > 1 and snap.best else ""
            describe("trials", f"best {first or '—'}{front} · {snap.pruned} pruned · {snap.failed} failed")

    return update
