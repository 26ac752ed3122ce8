"""``nnforge search RECIPE``: run a recipe with a ``search`` step, showing the study's trials as they finish.

``--workers N`` runs N processes on the study's storage, ``--storage`` puts the study in a journal file or on
PostgreSQL (``postgresql://…``; a study of the same name there resumes), ``--trials`` sets the number of trials;
each applies to every search step of the recipe (the same as ``--set steps[i].workers=N``). Every option is
checked before anything is written: bad input exits 2 and leaves no folder or ledger event.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from nnforge.cli._common import console, metrics_table, safe
from nnforge.cli.run import ActorOpt, JsonOpt, LedgerOpt, RecipeArg, RunsDirOpt, SetOpt, one_recipe


def search(
    recipe: RecipeArg,
    workers: Annotated[int | None, typer.Option(help="Worker processes sharing the study (default: the recipe's, 1).",
                                                min=1, max=256)] = None,
    storage: Annotated[str | None, typer.Option(help="Study storage: a journal file path, or a postgresql:// URL "
                                                "(default: search.journal in the run folder).")] = None,
    trials: Annotated[int | None, typer.Option(help="Number of trials (default: the recipe's).", min=1)] = None,
    set_: SetOpt = None, runs_dir: RunsDirOpt = "runs", ledger: LedgerOpt = None, actor: ActorOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Search a recipe's space (hyperparameters, architecture, any recipe value) on Optuna; every trial is
    recorded in the ledger, the best trials are written as ready-to-run recipes."""
    import logging

    from nnforge.cli.run import execute

    if not logging.getLogger().isEnabledFor(logging.INFO):  # Optuna logs every trial at INFO: --verbose shows it
        logging.getLogger("optuna").setLevel(logging.WARNING)
    rec = with_search_options(one_recipe(recipe), set_ or [], workers=workers, storage=storage, trials=trials)
    console.print(f"[bold]nnforge search[/] {safe(rec.name)}: {len(rec.steps)} steps "
                  f"({', '.join(s.name for s in rec.steps)}), seed {rec.seed}")
    execute(rec, runs_dir=runs_dir, ledger=ledger, actor=actor, json_=json_, summary=_table, bars=trial_progress)


def with_search_options(name: str, overrides: list[str], *, workers: int | None, storage: str | None,
                        trials: int | None) -> Any:
    """The recipe with the command line's search options set on each of its search steps.

    Raises:
        ConfigError: the recipe has no search step, or an option it refuses.
    """
    from nnforge.errors import ConfigError
    from nnforge.recipes import load_recipe

    rec = load_recipe(name, overrides)
    at = [i for i, s in enumerate(rec.steps) if s.name == "search"]
    if not at:
        raise ConfigError(f"recipe {rec.name!r} has no search step; add one (docs/search.md shows how) or run it "
                          "with `nnforge run`")
    given = {"workers": workers, "trials": trials,
             "storage": os.path.abspath(storage) if storage and "://" not in storage else storage}
    extra = [f"steps[{i}].{k}={_yaml(v)}" for i in at for k, v in given.items() if v is not None]
    return load_recipe(name, [*overrides, *extra]) if extra else rec


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value)  # JSON is YAML: a path or URL with ':' or '#' stays one string


@contextmanager
def trial_progress() -> Iterator[Any]:
    """A rich display of the study: a bar of trials done, with the best value so far and the pruned and failed
    counts beside it, and one bar per other task; the ``progress(task, done, total)`` callback (with
    ``describe(task, text)``) that drives it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nnforge.cli._common import console

    columns = (TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal and
                  os.environ.get("NNFORGE_PROGRESS") != "1") as bars:
        tasks: dict[str, Any] = {}

        def task_id(task: str, total: int | None = None) -> Any:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total, info="")
            return tasks[task]

        class Display:
            def __call__(self, task: str, done: int, total: int) -> None:
                bars.update(task_id(task, total), completed=done, total=total)

            def describe(self, task: str, text: str) -> None:
                bars.update(task_id(task), info=safe(text))

        yield Display()


def _table(metrics: dict[str, Any]) -> None:
    keys = [k for k in metrics if k.startswith("search_")]
    metrics_table("search", metrics, keys)
