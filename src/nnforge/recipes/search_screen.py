"""Latency screening for a recipe search: trials predicted over the latency constraint are never trained.

With ``screen:`` in a ``search`` step, before the study starts the step

1. draws ``screen.measure`` candidates from the space (Optuna's random sampler, the step's seed + 1), builds each
   one's model untrained from the trial recipe's ``model`` section, and measures its batch-1 latency on one input of
   the data (:func:`~nnforge.hardware.measure_model`);
2. fits a :class:`~nnforge.search.predictor.LatencyPredictor` on all but the last ``screen.held_out`` of them and
   reports its median relative error on those (``search_screen_median_abs_err``), then refits on all;
3. runs the study with every trial first built (not trained) and predicted: one predicted above the
   ``latency_b1_ms`` constraint's bound is stopped there and recorded as ``pruned``, with the prediction and the
   reason in its ``search.trial`` event. Optuna's samplers rank a pruned trial without values below every complete
   one, so TPE and the evolution sampler move away from slow architectures.

What is predicted is the latency of the model the trial recipe builds, so screening is refused when the trial
steps change the architecture after training (``prune``, ``quantize``): their final model is not that one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field, model_validator

from nnforge.config import Config
from nnforge.errors import ConfigError

__all__ = ["ScreenOptions", "RecipeScreen", "fit_recipe_screen", "screen_limit", "check_screen",
           "candidate_features", "screen_trial"]

log = logging.getLogger(__name__)

CHANGES_ARCHITECTURE = ("prune", "quantize")
"""Trial steps whose final model is not the one the trial recipe builds: screening cannot predict it."""


class ScreenOptions(Config):
    """Options of a search step's ``screen``."""

    measure: int = Field(30, ge=4, le=10_000, description="candidates built untrained and timed to fit the predictor")
    held_out: int = Field(10, ge=1, le=10_000, description="of those, kept out of the fit to report its error")
    repeats: int = Field(10, ge=1, le=10_000, description="timed batch-1 calls per candidate")

    @model_validator(mode="after")
    def _enough_to_fit(self) -> ScreenOptions:
        if self.measure - self.held_out < 3:
            raise ValueError(f"screen: measure ({self.measure}) must exceed held_out ({self.held_out}) by at least 3: "
                             "the predictor is fitted on the rest")
        return self


def screen_limit(constraints: list[Any]) -> float:
    """The bound of the ``latency_b1_ms <= X`` constraint (the tightest when there are several).

    Raises:
        ConfigError: there is none: screening has nothing to screen against.
    """
    bounds = [c.bound for c in constraints if c.metric == "latency_b1_ms" and c.op == "<="]
    if not bounds:
        raise ConfigError("search: screen predicts batch-1 latency to skip candidates over the latency constraint, "
                          "but there is none; add one (constraints: ['latency_b1_ms <= 3']) or remove screen")
    return min(bounds)


def check_screen(space: Mapping[str, Any], trial_step_names: list[str], constraints: list[Any]) -> float:
    """Everything screening needs, checked before the run: a latency constraint, a searched ``model.`` value, no
    trial step that changes the architecture after training. Returns the latency limit."""
    limit = screen_limit(constraints)
    if not any(path.startswith("model.") for path in space):
        raise ConfigError("search: screen predicts latency from the architecture, but no space path is a model "
                          f"value (model.options.…); the space has {', '.join(space)}")
    changing = [n for n in trial_step_names if n in CHANGES_ARCHITECTURE]
    if changing:
        raise ConfigError(f"search: screen predicts the latency of the model the trial recipe builds, but the trial "
                          f"steps {', '.join(changing)} change it after training; screen searches without them")
    return limit


def candidate_features(model: Any, example: Any, params: Mapping[str, Any]) -> dict[str, float]:
    """:func:`~nnforge.search.predictor.model_features` of a built candidate plus its numeric ``model.`` values."""
    from nnforge.search.predictor import model_features

    features = model_features(model, example)
    for key, value in params.items():
        if key.startswith("model.") and isinstance(value, int | float) and not isinstance(value, bool):
            features[f"option:{key}"] = float(value)
    return features


@dataclass(frozen=True)
class RecipeScreen:
    """A fitted screen: the predictor (as a dict: it travels to worker processes), the limit, its held-out error."""

    predictor: dict[str, Any]
    limit_ms: float
    median_abs_err: float
    measured: list[dict[str, Any]]  # {params, latency_b1_ms, held_out}

    def summary(self) -> dict[str, Any]:
        return {"limit_ms": self.limit_ms, "median_abs_err": self.median_abs_err, "measured": len(self.measured),
                "held_out": sum(1 for m in self.measured if m["held_out"]), "predictor": self.predictor}


def fit_recipe_screen(base: Mapping[str, Any], space: Mapping[str, Any], splits: Mapping[str, Any], *,
                      num_classes: int | None, seed: int, limit_ms: float, options: ScreenOptions,
                      progress: Callable[[str, int, int], None] | None = None) -> RecipeScreen:
    """Build and time ``options.measure`` candidates of ``space`` and fit the predictor (see the module)."""
    import optuna

    from nnforge.hardware import measure_model
    from nnforge.recipes.runs import build_base
    from nnforge.recipes.schema import parse_recipe
    from nnforge.recipes.search_run import example_input, trial_document
    from nnforge.search import suggest
    from nnforge.search.predictor import fit_latency_predictor

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed + 1))
    rows: list[tuple[dict[str, Any], dict[str, float], float]] = []
    for i in range(options.measure):
        params = suggest(study.ask(), space)
        source = parse_recipe(trial_document(base, params)).model.model_dump(exclude_none=True)
        model = build_base(source, num_classes, seed=seed)
        example = example_input(model, splits, seed)
        latency = float(measure_model(model, example, repeats=options.repeats)["latency_b1_ms"])
        rows.append((params, candidate_features(model, example, params), latency))
        if progress:
            progress("screen", i + 1, options.measure)
    fit_rows, held = rows[:-options.held_out], rows[-options.held_out:]
    first = fit_latency_predictor([f for _, f, _ in fit_rows], [y for _, _, y in fit_rows])
    err = first.median_relative_error([f for _, f, _ in held], [y for _, _, y in held])
    predictor = fit_latency_predictor([f for _, f, _ in rows], [y for _, _, y in rows])
    log.info("search screen: %d candidates timed, held-out median relative error %.3f", len(rows), err)
    measured = [{"params": p, "latency_b1_ms": y, "held_out": i >= len(fit_rows)} for i, (p, _, y) in enumerate(rows)]
    return RecipeScreen(predictor.to_dict(), limit_ms, err, measured)


def screen_trial(trial: Any, predictor: Mapping[str, Any], limit_ms: float, model: Any, splits: Mapping[str, Any],
                 seed: int) -> None:
    """Predict a built trial model's latency (kept as the trial's ``predicted_latency_b1_ms``); above the limit,
    mark it ``screened`` and raise ``optuna.TrialPruned``: it is not trained."""
    import optuna

    from nnforge.recipes.search_run import example_input
    from nnforge.search.predictor import PREDICTED_ATTR, SCREENED_ATTR, LatencyPredictor

    predicted = LatencyPredictor.from_dict(predictor).predict(
        candidate_features(model, example_input(model, splits, seed), trial.params))
    trial.set_attr(PREDICTED_ATTR, predicted)
    if predicted > limit_ms:
        reason = f"screened: predicted {predicted:.4g} ms > {limit_ms:.4g} ms, not trained"
        trial.set_attr(SCREENED_ATTR, reason)
        raise optuna.TrialPruned(reason)
