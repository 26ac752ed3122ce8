"""A search trial over a recipe: the recipe with the trial's sampled values set at their paths, run as a run.

The ``search`` step (:mod:`nnforge.recipes.steps.search`) hands :class:`RecipeTrial` to
:func:`nnforge.search.search`. Each trial:

1. takes the *trial recipe* — the search recipe's model, data, seed and metadata with the step's
   ``trial_steps`` as its steps — and sets every sampled value at its path (``model.options.n_layer``,
   ``steps[0].optimizer_options.lr``: the ``--set`` paths, ``steps`` meaning the trial steps);
2. runs it in-process as a run of its own (``run_recipe``: preflight, its own run id and folder under the
   search run's ``trials/``, every step in the ledger), the train steps' evaluations reaching the pruner
   through ``ctx.shared[TRAIN_CALLBACKS]``, the finetune step's epochs through ``ctx.shared[EVAL_REPORTERS]``;
3. measures the trial's final model with :func:`nnforge.hardware.measure_model` (batch-1 latency, throughput,
   peak memory, file size of its weights, energy per inference) and the energy the whole trial took;
4. returns the steps' numeric metrics and those measurements, and records a ``search.trial`` event
   (params, metrics, state, energy) in the search run — also for a pruned or failed trial.

The trial recipe with the values set is what :func:`trial_document` returns: the search step writes the best
trials' documents as ``best-<k>.yaml``, which ``nnforge run`` accepts unchanged and which reproduce the trial.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from nnforge.errors import ConfigError, NnforgeError
from nnforge.recipes.schema import Recipe

__all__ = ["RecipeTrial", "trial_base_document", "trial_document", "check_space_paths", "check_storage",
           "trial_metric_names", "measure_final_model",
           "HARDWARE_METRICS", "STEP_METRICS"]

log = logging.getLogger(__name__)

HARDWARE_METRICS = ("latency_b1_ms", "throughput_per_s", "peak_memory_mb", "size_mb", "energy_j_per_inference",
                    "energy_j_trial", "parameters", "trial_seconds")
"""What every trial measures on its final model (``measure_model``), beside the steps' metrics."""

STEP_METRICS: dict[str, tuple[str, ...]] = {
    "train": ("train_steps", "train_seconds", "train_final_loss", "train_energy_j", "val_loss"),
    "qat": ("train_steps", "train_seconds", "train_final_loss", "train_energy_j", "val_loss"),
    "finetune": ("finetune_best_val_acc", "finetune_best_epoch", "finetune_seconds", "finetune_steps",
                 "finetune_wise_alpha", "finetune_energy_j", "val_accuracy"),
}
"""The metrics a step reports, for the steps whose metrics are known before they run (others: any name)."""


# --- the trial recipe --------------------------------------------------------------------------------------

def trial_base_document(recipe: Recipe, trial_steps: Iterable[Any]) -> dict[str, Any]:
    """The trial recipe as a YAML-ready document: ``recipe``'s name, seed, model, data and metadata, with
    ``trial_steps`` (step entries as a recipe writes them) as its steps."""
    doc: dict[str, Any] = {"name": recipe.name, "description": recipe.description, "seed": recipe.seed,
                           "model": recipe.model.model_dump(exclude_defaults=True),
                           "data": recipe.data.model_dump(exclude_defaults=True),
                           "steps": copy.deepcopy(list(trial_steps))}
    metadata = recipe.metadata.model_dump(exclude_defaults=True)
    if metadata:
        doc["metadata"] = metadata
    if not doc["description"]:
        del doc["description"]
    return doc


def trial_document(base: Mapping[str, Any], params: Mapping[str, Any], *, name: str | None = None) -> dict[str, Any]:
    """``base`` (a trial recipe document) with each value of ``params`` set at its path; ``name`` renames it.

    Raises:
        ConfigError: a path that cannot be set (an index past the end, a key inside a value that is no mapping).
    """
    from nnforge.recipes.schema import _set_path

    doc = copy.deepcopy(dict(base))
    for path, value in params.items():
        try:
            _set_path(doc, path, value)
        except ConfigError as exc:
            raise ConfigError(f"{str(exc).removeprefix('--set ')}; give a path of the trial recipe (steps[i] are "
                              "the trial_steps)") from None
    if name is not None:
        doc["name"] = name
    return doc


def _probe_values(param: Any) -> list[Any]:
    """The values a path is checked with: both ends of a range, every choice."""
    if param.kind == "categorical":
        return list(param.choices or [])
    cast = int if param.kind == "int" else float
    return [cast(param.low), cast(param.high)]


def check_space_paths(base: Mapping[str, Any], space: Mapping[str, Any], plan: Any) -> None:
    """Every key of ``space`` is a path of the trial recipe whose values make a valid trial recipe: set alone at
    each end of its range (each choice), the trial recipe parses (unknown step options, optimizer options and
    dataset options are refused there) and, for a ``model.…`` path, the model builds.

    Raises:
        ConfigError: one line per problem, each naming the space key, before anything is written.
    """
    from nnforge.recipes.runs import build_base
    from nnforge.recipes.schema import parse_recipe

    problems: list[str] = []
    for key, param in space.items():
        for value in _probe_values(param):
            try:
                doc = trial_document(base, {key: value})
                recipe = parse_recipe(doc)
                if key.startswith("model."):
                    with torch.random.fork_rng(devices=[]):
                        build_base(recipe.model.model_dump(exclude_none=True),
                                   getattr(plan.dataset, "num_classes", None), seed=recipe.seed)
            except NnforgeError as exc:
                problems.append(f"space[{key!r}] = {value!r}: " + str(exc).replace("\n", "\n    "))
                break
    if problems:
        raise ConfigError("search: the space names paths the trial recipe cannot take (its steps[i] are the "
                          "trial_steps):\n  " + "\n  ".join(problems))


def check_storage(target: str | None) -> None:
    """A study storage the search can open: a ``postgresql://`` URL, or a journal file in an existing folder (not
    a folder itself); ``None`` (the run folder's ``search.journal``) always is.

    Raises:
        ConfigError: naming the storage and what to give instead.
    """
    if target is None:
        return
    if "://" in target:
        scheme = target.split("://", 1)[0].lower()
        if scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise ConfigError(f"search: storage {scheme}:// is not supported; give a journal file path (one machine) "
                              "or a postgresql:// URL (many machines)")
        return
    path = Path(target)
    if path.is_dir():
        raise ConfigError(f"search: storage {target!r} is a folder; give a journal file path in it (e.g. "
                          f"{str(path / 'study.journal')!r})")
    if not path.parent.is_dir():
        raise ConfigError(f"search: the storage's folder {str(path.parent)!r} does not exist; create it or give "
                          "another path")


def trial_metric_names(trial_steps: Iterable[Any], plan: Any) -> set[str] | None:
    """The metrics a trial returns, when every trial step's metrics are known (``None``: some step's are not)."""
    from nnforge.data import ArrayClassification

    names = set(HARDWARE_METRICS)
    for entry in trial_steps:
        step = entry if isinstance(entry, str) else next(iter(entry))
        if step not in STEP_METRICS:
            return None
        names |= set(STEP_METRICS[step])
        if step in ("train", "qat") and isinstance(plan.splits.get("dataset"), ArrayClassification):
            names.add("val_accuracy")
    return names


# --- one trial ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecipeTrial:
    """The trial function of a recipe search: picklable, so that worker processes can run it.

    Args:
        base: the trial recipe document (:func:`trial_base_document`).
        trials_dir: the folder that receives one run folder per trial.
        ledger: the ledger's location (each call opens it: worker processes share it).
        run_id: the search run's id; ``search.trial`` events go to it, trial run ids start with it.
        prune_metric: the training evaluation metric reported to the pruner (None: no pruning reports).
        latency_repeats: timed batch-1 calls of ``measure_model``.
        progress: the run's progress callback for the trial's own steps (in-process trials only: a callback does
            not travel to worker processes).
        screen_predictor, screen_limit_ms: a fitted latency predictor (``LatencyPredictor.to_dict()``) and the
            limit: each trial's model is built and predicted first, and one over the limit is pruned untrained
            (:mod:`nnforge.recipes.search_screen`).
    """

    base: dict[str, Any]
    trials_dir: str
    ledger: str
    run_id: str
    actor: str | None = None
    prune_metric: str | None = None
    latency_repeats: int = 20
    progress: Any = field(default=None, compare=False, repr=False)
    screen_predictor: dict[str, Any] | None = None
    screen_limit_ms: float | None = None

    def document(self, number: int, params: Mapping[str, Any]) -> dict[str, Any]:
        """The trial recipe trial ``number`` runs, values set."""
        return trial_document(self.base, params, name=f"{self.base.get('name', 'recipe')}-trial-{number}")

    def __call__(self, trial: Any) -> dict[str, float]:
        from nnforge.hardware import EnergyMeter
        from nnforge.ledger import Ledger

        led = Ledger.open(self.ledger, actor=self.actor)
        t0 = time.perf_counter()
        run_id = f"{self.run_id}-t{trial.number:04d}"
        record: dict[str, Any] = {"number": trial.number, "params": dict(trial.params), "trial_run": run_id}
        try:
            with EnergyMeter() as meter:
                metrics, facts = self._run(trial, led, run_id)
            metrics["energy_j_trial"] = meter.reading.joules
            metrics["trial_seconds"] = time.perf_counter() - t0
            record.update(state="pruned" if trial.pruned else "complete", metrics=metrics,
                          energy_trial_source=meter.reading.source, **facts)
            led.append("search.trial", record, run=self.run_id)
            return metrics
        except Exception as exc:
            pruned = _pruned(exc)
            record.update(state="pruned" if pruned is not None else "failed", trial_seconds=time.perf_counter() - t0,
                          error=None if pruned is not None else f"{type(exc).__name__}: {exc}",
                          pruned_reason=str(pruned) if pruned is not None else None)
            led.append("search.trial", record, run=self.run_id)
            if pruned is not None:
                raise pruned from None
            raise
        finally:
            led.close()

    def _run(self, trial: Any, led: Any, run_id: str) -> tuple[dict[str, float], dict[str, Any]]:
        """Run the trial recipe as a run; its numeric metrics, and the final model's measurements unless the
        pruner stopped the trial (a pruned trial keeps its training figures only)."""
        import yaml

        from nnforge.recipes.runner import prepare, run_recipe
        from nnforge.recipes.schema import parse_recipe
        from nnforge.recipes.steps._base import EVAL_REPORTERS
        from nnforge.recipes.steps.train import TRAIN_CALLBACKS

        doc = self.document(trial.number, trial.params)
        recipe = parse_recipe(doc, source=yaml.safe_dump(doc, sort_keys=False))
        prepared = prepare(recipe)
        if self.screen_predictor is not None and self.screen_limit_ms is not None:
            from nnforge.recipes.search_screen import screen_trial

            screen_trial(trial, self.screen_predictor, self.screen_limit_ms, prepared.plan.model,
                         prepared.plan.splits, recipe.seed)
        callbacks = [trial.train_callback(self.prune_metric)] if self.prune_metric else []
        reporters = [trial.eval_reporter(self.prune_metric)] if self.prune_metric else []
        result = run_recipe(recipe, runs_dir=self.trials_dir, ledger=led, run_id=run_id, prepared=prepared,
                            shared={TRAIN_CALLBACKS: callbacks, EVAL_REPORTERS: reporters}, progress=self.progress)
        metrics = {k: float(v) for k, v in result.metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        facts: dict[str, Any] = {"trial_dir": str(Path(result.run_dir).resolve())}
        trial.set_attr("trial_run", run_id)  # kept in the study: a resumed search finds an earlier run's trials
        trial.set_attr("trial_dir", facts["trial_dir"])
        if not trial.pruned:
            measured, more = measure_final_model(result.run_dir, prepared.plan.splits, recipe.seed,
                                                 self.latency_repeats)
            metrics.update(measured)
            facts.update(more)
        return metrics, facts


def measure_final_model(run_dir: str | Path, splits: Mapping[str, Any], seed: int, repeats: int
                        ) -> tuple[dict[str, float], dict[str, Any]]:
    """Measure the final variant of the run in ``run_dir`` on one batch-1 input of its data: the numeric figures
    and the facts beside them (variant, weights file, energy source)."""
    from nnforge import runs
    from nnforge.hardware import measure_model
    from nnforge.models.checkpoint import load_weights
    from nnforge.recipes.runs import rebuild
    config = runs.read_config(run_dir)
    variant = config.get("final_variant")
    if not variant:
        raise ConfigError(f"trial run {run_dir} saved no model: give the trial steps a step that trains or "
                          "saves one (train, finetune, prune, quantize)")
    path = Path(run_dir) / config["variants"][variant]
    tensors, spec = load_weights(path)
    model = rebuild(spec, tensors)
    hw = measure_model(model, example_input(model, splits, seed), repeats=repeats, artifact_paths=[path])
    measured = {k: float(hw[k]) for k in ("latency_b1_ms", "throughput_per_s", "peak_memory_mb", "size_mb",
                                          "energy_j_per_inference") if hw.get(k) is not None}
    measured["parameters"] = float(sum(p.numel() for p in model.parameters()))
    return measured, {"variant": variant, "energy_source": hw.get("energy_source")}


def example_input(model: Any, splits: Mapping[str, Any], seed: int) -> Any:
    """One batch-1 input of the data, as the model's forward takes it (a text classifier: ids and mask)."""
    from nnforge.recipes.steps._calibration import calibration_batches

    batches, _ = calibration_batches(SimpleNamespace(model=model, data=dict(splits), seed=seed, shared={}), 1,
                                     batch_size=1)
    example = batches[0]
    if isinstance(example, Mapping):  # a text classifier: forward(input_ids, attention_mask)
        example = (example["input_ids"], example["attention_mask"])
    return example


def _pruned(exc: BaseException) -> BaseException | None:
    """The ``optuna.TrialPruned`` that stopped a trial, found through the step and run errors wrapping it."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if type(cur).__name__ == "TrialPruned":
            return cur
        cur = cur.__cause__ or cur.__context__
    return None
