"""Running a recipe: load data and model, run the steps in order, record everything in the ledger.

Nothing is written before the data are loaded, the model is built and every step's ``preflight`` has
checked its options against them (:func:`prepare`): bad input creates no run folder and no ledger event.
The run folder ``runs/<run-id>/`` receives ``config.json`` first, then each step's artifacts (atomic
writes), ``metrics.json`` after every step (nothing is lost when a later step fails) and
``report.html``. The ledger receives ``run.started`` (recipe, its sha256 and git commit, seed,
environment), ``data.loaded``, ``model.loaded``, ``step.started`` (full config), ``artifact.written``
(sha256 of each file), ``step.finished`` (metrics, seconds) or ``step.failed``, and ``run.finished`` or ``run.failed`` (with
``interrupted: true`` after Ctrl-C); the folder's status follows (running, finished, failed, interrupted).
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from nnforge import runs
from nnforge.errors import ConfigError, DataError, NnforgeError, StepFailedError
from nnforge.hardware import machine_facts
from nnforge.ledger import Ledger
from nnforge.recipes.runs import build_base
from nnforge.recipes.schema import Recipe
from nnforge.recipes.steps import STEPS, RunContext
from nnforge.recipes.steps._base import Preflight, ProgressFn, run_preflight

__all__ = ["RunResult", "Prepared", "prepare", "check_runs_dir", "run_recipe", "new_run_id", "model_task"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: Path
    metrics: dict[str, Any]
    report: Path | None
    head: str


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _git_facts(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    folder = str(Path(path).resolve().parent)
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=False)
        if commit.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--", str(Path(path).resolve())],
                               capture_output=True, text=True, timeout=5, check=False)
        return {"git_commit": commit.stdout.strip(), "recipe_modified_since_commit": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def load_data(recipe: Recipe) -> tuple[dict[str, Any], Any]:
    """The dataset and what steps read from ``ctx.data``: text splits, or ``{"dataset": …}`` otherwise."""
    from nnforge import data as data_mod

    spec = recipe.data
    dataset = data_mod.load(spec.dataset, **spec.options)
    if not isinstance(dataset, data_mod.TextClassification):
        return {"dataset": dataset}, dataset
    for role in ("train_split", "test_split", "val_split"):
        name = getattr(spec, role)
        # the default validation split is optional (your files may have none); one the recipe names is not
        if name and name not in dataset.splits and (role != "val_split" or role in spec.model_fields_set):
            raise DataError(f"data.{role}: dataset {spec.dataset!r} has no split {name!r}; it has "
                            f"{sorted(dataset.splits)}")
    splits: dict[str, Any] = {"train": dataset.split(spec.train_split).take(spec.max_train, recipe.seed),
                              "test": dataset.split(spec.test_split)}
    if spec.val_split and spec.val_split in dataset.splits:
        splits["val"] = dataset.split(spec.val_split)
    return splits, dataset


def _check_labels(splits: dict[str, Any], num_classes: int) -> None:
    for name, sp in splits.items():
        bad = [y for y in sp.labels if not 0 <= y < num_classes]
        if bad:
            raise DataError(f"split {name!r} has labels {sorted(set(bad))[:5]} outside [0, {num_classes})")


def _check_fits_data(model: Any, dataset: Any, source: dict[str, Any]) -> None:
    """An architecture's output size must fit its data (a digits CNN with 5 classes on 10 digits, a char GPT whose
    vocabulary is smaller than the corpus's): refused here, not as an IndexError inside the first step."""
    from nnforge.data import ArrayClassification, CharCorpus

    config = getattr(model, "config", None)
    where = f"model {source.get('architecture') or source.get('name') or source.get('hf_dir')!r}"
    if isinstance(dataset, ArrayClassification):
        have = getattr(config, "num_classes", None)
        if isinstance(have, int) and have != dataset.num_classes:
            raise ConfigError(f"{where} has num_classes={have} but the dataset {dataset.name!r} has "
                              f"{dataset.num_classes} classes: set model.options.num_classes to {dataset.num_classes}")
    elif isinstance(dataset, CharCorpus):
        have = getattr(config, "vocab_size", None)
        if isinstance(have, int) and have < dataset.vocab_size:
            raise ConfigError(f"{where} has vocab_size={have} but the corpus {dataset.name!r} has "
                              f"{dataset.vocab_size} characters: set model.options.vocab_size to at least "
                              f"{dataset.vocab_size}")


@dataclass
class Prepared:
    """A recipe's data and model, loaded and checked before anything is written (see :func:`prepare`)."""

    plan: Preflight
    model_spec: dict[str, Any]
    data_summary: dict[str, Any]
    model_facts: dict[str, Any]
    rng_state: torch.Tensor  # the seeded generator's state after loading: the steps continue from it


def model_task(source: dict[str, Any]) -> str | None:
    """What a model source does, as the model registry says (``"text-classification"`` for a pretrained text
    model or an ``hf_dir``); ``None`` when it does not say."""
    from nnforge.errors import NnforgeError
    from nnforge.models import task_of

    try:
        return task_of(source.get("architecture"))
    except (NnforgeError, KeyError):
        return None


def prepare(recipe: Recipe) -> Prepared:
    """Load the data, build the model and run every step's ``preflight``, writing nothing.

    Every problem known before computation (a missing file or column, a single class, a split the data
    lacks, a weights file that is absent, a LoRA layer the model does not have) is raised here, so that it
    creates no run folder and no ledger event.

    Raises:
        ConfigError, DataError, ModelError: bad input (exit 2 in the CLI).
    """
    from nnforge.data import TextClassification

    with torch.random.fork_rng(devices=[]):  # seeded like the run, without changing the caller's RNG state
        torch.manual_seed(recipe.seed)
        splits, dataset = load_data(recipe)
        text = isinstance(dataset, TextClassification)
        if not text:
            _check_split_names(recipe, dataset)
        source = recipe.model.model_dump(exclude_none=True)
        num_classes = getattr(dataset, "num_classes", None)
        model = build_base(source, num_classes if text else None, seed=recipe.seed)
        _check_fits_data(model, dataset, source)
        if text:
            if getattr(model, "num_classes", num_classes) != num_classes:
                raise DataError(f"the model has {getattr(model, 'num_classes', '?')} outputs but the dataset has "
                                f"{num_classes} classes")
            _check_labels(splits, dataset.num_classes)
        plan = Preflight(recipe=recipe, splits=splits, dataset=dataset, model=model, task=model_task(source))
        run_preflight(plan, recipe.steps)
        rng_state = torch.get_rng_state()
    summary = dataset.summary() if hasattr(dataset, "summary") else {"name": recipe.data.dataset}
    if text:
        summary["splits"] = {k: {"n": len(v), "sha256": v.sha256(),
                                 "class_counts": [v.labels.count(c) for c in range(dataset.num_classes)]}
                             for k, v in splits.items()}
    elif hasattr(dataset, "source"):
        summary = {"name": dataset.name, "source": dataset.source}
    spec = {"base": source, "num_classes": num_classes, "label_names": getattr(dataset, "label_names", []),
            "kind": "text-classifier" if text else "module"}
    facts = {"source": source, "parameters": sum(p.numel() for p in model.parameters()), "num_classes": num_classes}
    return Prepared(plan, spec, summary, facts, rng_state)


def _check_split_names(recipe: Recipe, dataset: Any) -> None:
    """A split the recipe names explicitly must exist in a dataset with named splits (digits: train, test)."""
    have = getattr(dataset, "splits", None)
    if not isinstance(have, dict):
        return
    spec = recipe.data
    for field_name in ("train_split", "val_split", "test_split"):
        value = getattr(spec, field_name)
        if field_name in spec.model_fields_set and value is not None and value not in have:
            raise DataError(f"data.{field_name}: dataset {spec.dataset!r} has no split {value!r}; it has "
                            f"{sorted(have)}")


def _start(recipe: Recipe, runs_dir: Path, ledger: Ledger, run_id: str) -> tuple[Path, dict[str, Any]]:
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    env = {**machine_facts(), "nnforge": _version()}
    # a file ledger by absolute path: commands on this run from any folder find it (a URL is kept, redacted)
    where = ledger.location if "://" in ledger.location else os.path.abspath(ledger.location)
    config = {"run_id": run_id, "recipe": recipe.to_dict(), "recipe_source": recipe.source, "environment": env,
              "ledger": where, "variants": {}, "created": datetime.now(UTC).isoformat(), "status": "running",
              **runs.process_facts(run_dir)}
    runs.write_config(run_dir, config)
    ledger.append("run.started", {"recipe": recipe.to_dict(), "recipe_sha256": recipe.sha256, "seed": recipe.seed,
                                  "run_dir": str(run_dir), "environment": env, **_git_facts(recipe.path)}, run=run_id)
    return run_dir, config


def _version() -> str:
    from nnforge import __version__

    return __version__


def check_runs_dir(runs_dir: str | Path) -> None:
    """Refuse a runs folder that is a file (before anything is loaded or written)."""
    runs_dir = Path(runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir}: the runs folder is a file; give a folder (--runs-dir)")


def run_recipe(recipe: Recipe, *, runs_dir: str | Path = "runs", ledger: Ledger | None = None,
               progress: ProgressFn | None = None, run_id: str | None = None,
               prepared: Prepared | None = None, shared: dict[str, Any] | None = None) -> RunResult:
    """Run every step of ``recipe``; returns the run's id, folder, metrics and report path.

    The data and the model are loaded and every step's preflight runs first (:func:`prepare`, or pass its
    result as ``prepared``, once: the run trains its model in place): bad input found there creates no run
    folder and no ledger event. ``shared`` seeds ``ctx.shared`` (e.g. extra training callbacks for a search trial).

    Raises:
        NnforgeError: bad input (exit 2 in the CLI) or a failed step (exit 1); the ledger records
            ``step.failed`` / ``run.failed`` and the run folder keeps what was written before, with status
            "failed" ("interrupted" after Ctrl-C or a KeyboardInterrupt raised on SIGTERM).
    """
    check_runs_dir(Path(runs_dir))
    prepared = prepared or prepare(recipe)
    ledger = ledger or Ledger.open()
    run_id = run_id or new_run_id()
    run_dir, _ = _start(recipe, Path(runs_dir), ledger, run_id)
    ctx: RunContext | None = None
    with torch.random.fork_rng(devices=[]):  # seeds the run without leaving global RNG state changed
        torch.set_rng_state(prepared.rng_state)
        try:
            ctx = _context(prepared, run_dir, ledger, run_id, progress)
            ctx.shared.update(shared or {})
            for i, step in enumerate(recipe.steps):
                _run_step(ctx, i, step)
        except BaseException as exc:
            _fail(exc, run_dir, ledger, run_id, ctx)
            raise
    ctx.flush(status="finished")
    runs.update_config(run_dir, ended=datetime.now(UTC).isoformat())
    head = ledger.append("run.finished", {"metrics": ctx.metrics, "artifacts": ctx.artifacts}, run=run_id).hash
    report = run_dir / "report.html"
    return RunResult(run_id, run_dir, ctx.metrics, report if report.exists() else None, head)


def _fail(exc: BaseException, run_dir: Path, ledger: Ledger, run_id: str, ctx: RunContext | None) -> None:
    """Record a run that stopped: ``run.failed`` (with ``interrupted`` and the reason) and the folder's status,
    without hiding the error that stopped it."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    reason = (str(exc) or "Ctrl-C") if interrupted else f"{type(exc).__name__}: {exc}"
    status = "interrupted" if interrupted else "failed"
    try:
        ledger.append("run.failed", {"error": f"{type(exc).__name__}: {reason}" if interrupted else reason,
                                     "status": status, "interrupted": interrupted}, run=run_id)
    except Exception as err:  # the ledger itself failing must not hide why the run stopped
        log.warning("could not record run.failed for %s: %s", run_id, err)
    try:
        if ctx is not None:
            ctx.flush(status=status)
        runs.update_config(run_dir, status=status, ended=datetime.now(UTC).isoformat())
    except (NnforgeError, OSError) as err:
        log.warning("could not mark %s as %s: %s", run_dir, status, err)


def _context(prepared: Prepared, run_dir: Path, ledger: Ledger, run_id: str,
             progress: ProgressFn | None) -> RunContext:
    """The run's context from what :func:`prepare` loaded; records ``data.loaded`` and ``model.loaded``."""
    plan = prepared.plan
    ledger.append("data.loaded", prepared.data_summary, run=run_id)
    ledger.append("model.loaded", prepared.model_facts, run=run_id)
    ctx = RunContext(run_id=run_id, run_dir=run_dir, recipe=plan.recipe, ledger=ledger, seed=plan.recipe.seed,
                     data=plan.splits, model=plan.model, model_spec=prepared.model_spec, progress=progress)
    ctx.sections["data"] = prepared.data_summary
    runs.update_config(run_dir, label_names=list(getattr(plan.dataset, "label_names", [])))
    return ctx


def _run_step(ctx: RunContext, index: int, step: Any) -> None:
    impl = STEPS.get(step.name)()
    ctx.ledger.append("step.started", {"index": index, "step": step.name,
                                       "config": step.config.model_dump(mode="json")}, run=ctx.run_id)
    t0 = time.perf_counter()
    try:
        result = impl.run(ctx, step.config)
    except NnforgeError as exc:
        ctx.ledger.append("step.failed", {"index": index, "step": step.name, "error": str(exc)}, run=ctx.run_id)
        ctx.flush()
        raise
    except Exception as exc:
        ctx.ledger.append("step.failed", {"index": index, "step": step.name,
                                          "error": f"{type(exc).__name__}: {exc}"}, run=ctx.run_id)
        ctx.flush()
        raise StepFailedError(f"step {index} ({step.name}) failed: {type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - t0
    ctx.metrics.update(result.metrics)
    ctx.ledger.append("step.finished", {"index": index, "step": step.name, "seconds": seconds,
                                        "metrics": result.metrics, "details": result.details}, run=ctx.run_id)
    ctx.flush()
    log.info("step %d (%s) finished in %.1f s", index, step.name, seconds)
