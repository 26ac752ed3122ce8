"""``nnforge run``: run a recipe (a built-in name or a YAML file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Annotated, Any

import typer

from nnforge.cli._common import console, ledger_location, metrics_table, out, print_json, progress_bars

SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a field: key=value (YAML value), "
                                                "e.g. --set steps[1].train.epochs=2")]
RunsDirOpt = Annotated[str, typer.Option(help="Folder that receives runs/<run-id>/.")]
LedgerOpt = Annotated[str | None, typer.Option(help="Ledger database (default .nnforge/ledger.db).")]
ActorOpt = Annotated[str | None, typer.Option(help="Who runs this (default: the OS user).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


# the recipe is taken as a list so that a value given to a flag (`--json true quickstart`) is named as such
# instead of being read as the recipe (or as an unexpected extra argument)
RecipeArg = Annotated[list[str], typer.Argument(metavar="RECIPE", show_default=False,
                                                help="A built-in recipe name (see `nnforge recipes`) or a YAML file.")]
_FLAG_VALUES = ("true", "false", "yes", "no", "on", "off", "1", "0")


def one_recipe(args: list[str] | str) -> str:
    """The one recipe named on the command line; a flag value (``--json true``) is refused by name.

    Raises:
        ConfigError: a word like ``true`` that is no file, or more than one recipe.
    """
    from pathlib import Path

    from nnforge.errors import ConfigError

    given = [args] if isinstance(args, str) else list(args)
    values = [a for a in given if a.lower() in _FLAG_VALUES and not Path(a).exists()]
    if values:
        raise ConfigError(f"{values[0]!r} is not a recipe: --json and the other flags take no value (write "
                          f"`--json`, not `--json {values[0]}`)")
    if len(given) != 1:
        raise ConfigError(f"give one recipe; got {len(given)}: {' '.join(given)}")
    return given[0]


def run(
    recipe: RecipeArg, set_: SetOpt = None, runs_dir: RunsDirOpt = "runs", ledger: LedgerOpt = None,
    actor: ActorOpt = None, json_: JsonOpt = False,
) -> None:
    """Run a recipe end to end; every step is recorded in the ledger."""
    from nnforge.recipes import load_recipe

    rec = load_recipe(one_recipe(recipe), set_ or [])
    console.print(f"[bold]nnforge run[/] {rec.name}: {len(rec.steps)} steps "
                  f"({', '.join(s.name for s in rec.steps)}), seed {rec.seed}")
    execute(rec, runs_dir=runs_dir, ledger=ledger, actor=actor, json_=json_, summary=_summary)


def execute(rec: Any, *, runs_dir: str, ledger: str | None, actor: str | None, json_: bool,
            summary: Callable[[dict[str, Any]], None],
            bars: Callable[[], AbstractContextManager[Any]] = progress_bars) -> None:
    """Run a parsed recipe as ``nnforge run`` does (``nnforge prune RECIPE`` too): every step's preflight before
    any run folder or ledger event, progress bars (``bars``: another display, e.g. ``nnforge search``'s trials),
    SIGTERM as an interrupt; then the result as JSON or as ``summary(metrics)`` and the run's paths."""
    from nnforge.ledger import Ledger
    from nnforge.recipes import run_recipe
    from nnforge.recipes.runner import check_runs_dir, prepare

    check_runs_dir(runs_dir)
    prepared = prepare(rec)  # data, model and every step's preflight: bad input leaves no folder, no ledger
    led = Ledger.open(ledger_location(ledger), actor=actor)
    with bars() as progress, _sigterm_as_interrupt():
        result = run_recipe(rec, runs_dir=runs_dir, ledger=led, progress=progress, prepared=prepared)
    if json_:
        print_json({"run_id": result.run_id, "run_dir": str(result.run_dir), "metrics": result.metrics,
                    "report": str(result.report) if result.report else None, "ledger_head": result.head})
        return
    summary(result.metrics)
    out.print(f"run: {result.run_dir}")
    if result.report:
        out.print(f"report: {result.report}")
    out.print(f"ledger head: {result.head}")


def train(
    recipe: RecipeArg, set_: SetOpt = None, runs_dir: RunsDirOpt = "runs", ledger: LedgerOpt = None,
    actor: ActorOpt = None, json_: JsonOpt = False,
) -> None:
    """Train a model as a recipe says (optimizer and schedule by name); like `run`, for recipes that train."""
    from nnforge.errors import ConfigError
    from nnforge.recipes import load_recipe

    rec = load_recipe(one_recipe(recipe), set_ or [])
    if not any(s.name == "train" for s in rec.steps):
        raise ConfigError(f"recipe {rec.name!r} has no train step; use `nnforge run` for it")
    run(recipe, set_, runs_dir, ledger, actor, json_)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a recipe runs, SIGTERM (a scheduler stopping the job, ``kill``) stops it like Ctrl-C, so that the
    run is marked interrupted and the ledger records why, instead of the process vanishing mid-step."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"terminated by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _summary(metrics: dict[str, object]) -> None:
    keys = [k for k in ("baseline_majority_acc", "baseline_logreg_acc", "baseline_logreg_balanced_acc", "fp32_acc",
                        "int8_acc", "fp32_size_mb", "int8_size_mb", "int8_cos_mean", "fp32_latency_b1_ms",
                        "int8_latency_b1_ms", "int8-native_acc", "int8-native_cos_mean", "int8-native_latency_b1_ms",
                        "gate_quickstart_passed", "train_steps", "train_seconds", "val_loss", "val_accuracy")
            if k in metrics]
    metrics_table("results", metrics, keys)
