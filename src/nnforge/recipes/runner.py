"""Running a recipe: load data and model, run the steps in order, record everything in the ledger.

The run folder ``runs/<run-id>/`` receives ``config.json`` first, then each step's artifacts (atomic
writes), ``metrics.json`` after every step (nothing is lost when a later step fails) and
``report.html``. The ledger receives ``run.started`` (recipe, its sha256 and git commit, seed,
environment), ``data.loaded``, ``model.loaded``, ``step.started`` (full config), ``artifact.written``
(sha256 of each file), ``step.finished`` (metrics, seconds) or ``step.failed``, and ``run.finished``.
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
from nnforge.recipes.steps._base import ProgressFn

__all__ = ["RunResult", "run_recipe", "new_run_id"]

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
    splits: dict[str, Any] = {"train": dataset.split(spec.train_split).take(spec.max_train, recipe.seed),
                              "test": dataset.split(spec.test_split)}
    if spec.val_split:
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


def _start(recipe: Recipe, runs_dir: Path, ledger: Ledger, run_id: str) -> tuple[Path, dict[str, Any]]:
    if runs_dir.exists() and not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir}: the runs folder is a file; give a folder (--runs-dir)")
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    env = {**machine_facts(), "nnforge": _version()}
    # a file ledger by absolute path: commands on this run from any folder find it (a URL is kept, redacted)
    where = ledger.location if "://" in ledger.location else os.path.abspath(ledger.location)
    config = {"run_id": run_id, "recipe": recipe.to_dict(), "recipe_source": recipe.source, "environment": env,
              "ledger": where, "variants": {}, "created": datetime.now(UTC).isoformat(), "status": "running"}
    runs.write_config(run_dir, config)
    ledger.append("run.started", {"recipe": recipe.to_dict(), "recipe_sha256": recipe.sha256, "seed": recipe.seed,
                                  "run_dir": str(run_dir), "environment": env, **_git_facts(recipe.path)}, run=run_id)
    return run_dir, config


def _version() -> str:
    from nnforge import __version__

    return __version__


def run_recipe(recipe: Recipe, *, runs_dir: str | Path = "runs", ledger: Ledger | None = None,
               progress: ProgressFn | None = None, run_id: str | None = None) -> RunResult:
    """Run every step of ``recipe``; returns the run's id, folder, metrics and report path.

    Raises:
        NnforgeError: bad input (exit 2 in the CLI) or a failed step (exit 1); the ledger records
            ``step.failed`` / ``run.failed`` and the run folder keeps what was written before.
    """
    ledger = ledger or Ledger.open()
    run_id = run_id or new_run_id()
    run_dir, _ = _start(recipe, Path(runs_dir), ledger, run_id)
    with torch.random.fork_rng(devices=[]):  # seeds the run without leaving global RNG state changed
        torch.manual_seed(recipe.seed)
        try:
            ctx = _prepare(recipe, run_dir, ledger, run_id, progress)
            for i, step in enumerate(recipe.steps):
                _run_step(ctx, i, step)
        except BaseException as exc:
            ledger.append("run.failed", {"error": f"{type(exc).__name__}: {exc}"}, run=run_id)
            _mark_failed(run_dir)
            raise
    ctx.flush(status="finished")
    head = ledger.append("run.finished", {"metrics": ctx.metrics, "artifacts": ctx.artifacts}, run=run_id).hash
    report = run_dir / "report.html"
    return RunResult(run_id, run_dir, ctx.metrics, report if report.exists() else None, head)


def _mark_failed(run_dir: Path) -> None:
    """Set the run folder's status to failed, without hiding the error that failed the run."""
    try:
        runs.update_config(run_dir, status="failed")
    except NnforgeError as exc:
        log.warning("could not mark %s as failed: %s", run_dir, exc)


def _prepare(recipe: Recipe, run_dir: Path, ledger: Ledger, run_id: str, progress: ProgressFn | None) -> RunContext:
    from nnforge.data import TextClassification

    splits, dataset = load_data(recipe)
    summary = dataset.summary() if hasattr(dataset, "summary") else {"name": recipe.data.dataset}
    text = isinstance(dataset, TextClassification)
    if text:
        summary["splits"] = {k: {"n": len(v), "sha256": v.sha256(),
                                 "class_counts": [v.labels.count(c) for c in range(dataset.num_classes)]}
                             for k, v in splits.items()}
    elif hasattr(dataset, "source"):
        summary = {"name": dataset.name, "source": dataset.source}
    ledger.append("data.loaded", summary, run=run_id)
    source = recipe.model.model_dump(exclude_none=True)
    num_classes = getattr(dataset, "num_classes", None)
    model = build_base(source, num_classes if text else None, seed=recipe.seed)
    _check_fits_data(model, dataset, source)
    if text:
        if getattr(model, "num_classes", num_classes) != num_classes:
            raise DataError(f"the model has {getattr(model, 'num_classes', '?')} outputs but the dataset has "
                            f"{num_classes} classes")
        _check_labels(splits, dataset.num_classes)
    spec = {"base": source, "num_classes": num_classes, "label_names": getattr(dataset, "label_names", []),
            "kind": "text-classifier" if text else "module"}
    ledger.append("model.loaded", {"source": source, "parameters": sum(p.numel() for p in model.parameters()),
                                   "num_classes": num_classes}, run=run_id)
    ctx = RunContext(run_id=run_id, run_dir=run_dir, recipe=recipe, ledger=ledger, seed=recipe.seed, data=splits,
                     model=model, model_spec=spec, progress=progress)
    ctx.sections["data"] = summary
    runs.update_config(run_dir, label_names=list(getattr(dataset, "label_names", [])))
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
