"""``nnforge prune RUN|RECIPE``: prune a finished run's model into a new variant of that run, or run a recipe
with a ``prune`` step.

A RUN (folder or id) keeps its recorded variants; the pruned one is added beside them, its decisions recorded
in the run's ledger and its report rendered again. A RECIPE (built-in name or YAML file) without a prune step
gets one after its last training step; a recipe that has one runs as written (change it with ``--set``).
Every option is checked before anything is written: bad input exits 2 and leaves no file or ledger event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nnforge.cli._common import console, key_values, metrics_table, out, print_json, progress_bars, run_ledger

_TRAINING_STEPS = ("train", "finetune", "qat")


def _step_options(method: str | None, option: list[str], modules: list[str], exclude: list[str], base: str | None,
                  variant: str | None, calibration_batches: int | None, latency_repeats: int | None,
                  recovery_steps: int | None = None) -> dict[str, Any]:
    """The ``prune`` step's options the command line gave (nothing for an option left out)."""
    data = key_values(option, "--option", "sparsity=0.5")
    given: dict[str, Any] = {"modules": modules, "exclude": exclude, "base": base, "variant": variant,
                             "calibration_batches": calibration_batches, "latency_repeats": latency_repeats}
    step = {k: v for k, v in given.items() if v not in (None, [])}
    if method is not None or data:
        step["config"] = {"type": method or "unstructured", "data": data}
    if recovery_steps:
        step["recovery"] = {"train": {"max_steps": recovery_steps, "eval_every": recovery_steps}}
    return step


def _validated(step: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from nnforge.config import describe_validation_error
    from nnforge.errors import ConfigError
    from nnforge.recipes.steps.prune import PruneStepConfig

    try:
        return PruneStepConfig.model_validate({"config": {"type": "unstructured"}, **step})
    except ValidationError as exc:
        raise ConfigError("; ".join(describe_validation_error(exc, owner="the prune step"))) from None


def _with_prune_step(name: str, overrides: list[str], step: dict[str, Any]) -> Any:
    """The recipe, with ``step`` inserted after its last training step when it has no prune step of its own."""
    import yaml

    from nnforge.errors import ConfigError
    from nnforge.recipes import load_recipe
    from nnforge.recipes.schema import parse_recipe, resolve_recipe_path

    try:
        resolve_recipe_path(name)
    except ConfigError as exc:
        raise ConfigError(f"{name}: not a run folder or run id (under --runs-dir), and {exc}") from None
    rec = load_recipe(name, overrides)
    have = [i for i, s in enumerate(rec.steps) if s.name == "prune"]
    if have:
        if step:
            raise ConfigError(f"recipe {rec.name!r} has its own prune step (steps[{have[0]}]); change it with --set "
                              f"steps[{have[0]}].config.data.sparsity=0.7 (and so on), or give a recipe without one")
        return rec
    doc = yaml.safe_load(rec.source)
    at = max((i + 1 for i, s in enumerate(rec.steps) if s.name in _TRAINING_STEPS), default=0)
    doc["steps"].insert(at, {"prune": _validated(step).model_dump(mode="json", exclude_defaults=True)})
    return parse_recipe(doc, source=yaml.safe_dump(doc, sort_keys=False), path=rec.path)


def _is_run(target: str, runs_dir: str) -> bool:
    from nnforge.runs import is_run_folder

    return is_run_folder(target) or is_run_folder(Path(runs_dir) / target)


def prune(
    target: Annotated[str, typer.Argument(metavar="RUN|RECIPE", help="A run folder or id (its model is pruned into a "
                                          "new variant of the run), or a recipe: a built-in name or a YAML file.")],
    method: Annotated[str | None, typer.Option(help="A registered pruning method: unstructured (default), nm, …")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="A method option, key=value (YAML "
                                                     "value): -o sparsity=0.7 -o criterion=wanda")] = None,
    modules: Annotated[list[str] | None, typer.Option(help="Prune only modules matching this name pattern "
                                                      "(fnmatch; repeat).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Leave modules matching this pattern dense (repeat), "
                                                      "e.g. --exclude lm_head.")] = None,
    base: Annotated[str | None, typer.Option(help="The variant to prune (default: fp32).")] = None,
    variant: Annotated[str | None, typer.Option(help="Name of the new variant (default: pruned-<method>).")] = None,
    calibration_batches: Annotated[int | None, typer.Option(help="Batches for data-driven criteria (default 16).")] = None,
    latency_repeats: Annotated[int | None, typer.Option(help="Interleaved batch-1 timings against the base (0: none; "
                                                        "default 20).")] = None,
    recovery_steps: Annotated[int | None, typer.Option(help="Recovery training steps of the pruned model (the train "
                                                       "step's defaults; zeros stay zero).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a recipe field: key=value.")] = None,
    runs_dir: Annotated[str, typer.Option(help="Folder of runs (run ids are looked up, new runs land here).")] = "runs",
    ledger: Annotated[str | None, typer.Option(help="Ledger database (default: the run's, or .nnforge/ledger.db).")] = None,
    actor: Annotated[str | None, typer.Option(help="Who runs this (default: the OS user).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    allow_modified: Annotated[bool, typer.Option("--allow-modified", help="Prune a run even if its files differ from "
                                                 "what the ledger recorded (the choice is recorded).")] = False,
) -> None:
    """Prune a finished run's model into a new variant, or run a recipe with a prune step; every pruning
    decision is recorded in the ledger and the report gets a pruning section."""
    from nnforge.errors import ConfigError

    step = _step_options(method, option or [], modules or [], exclude or [], base, variant, calibration_batches,
                         latency_repeats, recovery_steps)
    if _is_run(target, runs_dir):
        if set_:
            raise ConfigError("--set changes a recipe; a finished run is pruned with the prune options "
                              "(--method, --option, --exclude, …)")
        _prune_run(target, _validated(step), runs_dir, ledger, actor, json_, allow_modified)
        return
    if allow_modified:
        raise ConfigError(f"--allow-modified applies to a finished run; {target!r} is not one under {runs_dir}/")
    _run_recipe(target, set_ or [], step, runs_dir, ledger, actor, json_)


def _prune_run(target: str, config: Any, runs_dir: str, ledger: str | None, actor: str | None, json_: bool,
               allow_modified: bool) -> None:
    from nnforge.ledger import Ledger
    from nnforge.recipes.prune_run import prune_run
    from nnforge.runs import find_run

    led = Ledger.open(run_ledger(ledger, find_run(target, runs_dir)), actor=actor)
    try:
        with progress_bars() as progress:
            done = prune_run(target, config, ledger=led, runs_dir=runs_dir, progress=progress,
                             allow_modified=allow_modified)
        head = led.head()
    finally:
        led.close()
    if json_:
        print_json({"run_dir": str(done.run_dir), "variant": done.variant, "base": done.base, "file": str(done.file),
                    "metrics": done.metrics, "report": str(done.report), "ledger_head": head})
        return
    _table(done.metrics)
    out.print(f"variant {done.variant} (from {done.base}): {done.file}\nreport: {done.report}\nledger head: {head}")


def _run_recipe(target: str, overrides: list[str], step: dict[str, Any], runs_dir: str, ledger: str | None,
                actor: str | None, json_: bool) -> None:
    from nnforge.cli.run import execute

    rec = _with_prune_step(target, overrides, step)
    console.print(f"[bold]nnforge prune[/] {rec.name}: {len(rec.steps)} steps ({', '.join(s.name for s in rec.steps)})")
    execute(rec, runs_dir=runs_dir, ledger=ledger, actor=actor, json_=json_, summary=_table)


def _table(metrics: dict[str, Any]) -> None:
    keys = [k for k in metrics if k.endswith(("_sparsity", "_params_ratio", "_flops_ratio", "_file_ratio",
                                              "_speedup_b1", "_modules_pruned", "_modules_skipped",
                                              "_recovery_steps", "_recovery_val_loss", "_recovery_val_accuracy"))]
    metrics_table("pruning", metrics, keys)
