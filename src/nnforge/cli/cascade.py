"""``nnforge cascade CONFIG --data RUN``: a cascade of finished runs (a small model, then a larger one, then a
person) evaluated on a split of a run's data — thresholds chosen on the validation split, then every tier's share,
accuracy and milliseconds per input on the test split, against each model alone. The person is simulated by the
true labels. Recorded in the run's ledger as ``cascade.evaluated``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from nnforge.cli._common import out, print_json


def _config(path: str) -> Any:
    import yaml

    from nnforge.deploy.cascade import CascadeConfig
    from nnforge.errors import ConfigError, DataError

    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (expected a cascade config, YAML or JSON: tiers: [...])")
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a YAML or JSON file ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a cascade config is a mapping with 'tiers'; got {type(doc).__name__}")
    doc.pop("type", None)
    try:
        return CascadeConfig(**doc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def cascade(config: Annotated[str, typer.Argument(help="Cascade config (YAML or JSON): tiers, cheapest first.")],
            data: Annotated[str | None, typer.Option(help="Run whose data and labels are used (default: the first "
                                                          "'run' tier's run).")] = None,
            split: Annotated[str, typer.Option(help="Split the cascade is measured on.")] = "test",
            choose_on: Annotated[str, typer.Option(help="Split the thresholds are chosen on; 'none' keeps the "
                                                        "config's.")] = "val",
            rule: Annotated[str, typer.Option(help="most-accurate, or cheapest (the reference tier's accuracy "
                                                   "at the least cost).")] = "most-accurate",
            limit: Annotated[int | None, typer.Option(min=1, help="At most this many inputs per split.")] = None,
            out_file: Annotated[str | None, typer.Option("--out", help="Write the full result as JSON here.")] = None,
            json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
            runs_dir: Annotated[str, typer.Option(help="Folder where run ids are looked up.")] = "runs",
            ledger: Annotated[str | None, typer.Option(help="Ledger database (default: the run's own).")] = None) -> None:
    """Evaluate a cascade of runs: thresholds chosen on validation data, shares and accuracy per tier on test."""
    from rich.table import Table

    from nnforge.errors import ConfigError
    from nnforge.ledger import atomic_write_text
    from nnforge.recipes.cascade import evaluate_cascade

    if rule not in ("most-accurate", "cheapest"):
        raise ConfigError(f"--rule must be most-accurate or cheapest; got {rule!r}")
    cfg = _config(config)
    if data is None:
        data = next((t.options.get("run") for t in cfg.tiers if t.kind == "run"), None)
        if data is None:
            raise ConfigError("--data: name the run whose data to use (the config has no 'run' tier to take it from)")
    doc = evaluate_cascade(cfg, data, split=split, choose_on=None if choose_on == "none" else choose_on,
                           rule=rule, limit=limit, runs_dir=runs_dir, ledger=ledger)  # type: ignore[arg-type]
    if out_file:
        atomic_write_text(out_file, json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    if json_:
        print_json(doc)
        return
    res, alone = doc["result"], doc["alone"]
    table = Table(title=f"cascade on {doc['data']['run']} / {split} ({doc['data']['inputs']} inputs; "
                        f"{doc['humans']})")
    for column in ("tier", "min confidence", "asked", "answered", "accuracy of its answers", "accuracy alone",
                   "ms per input"):
        table.add_column(column)
    for t in res["tiers"]:
        acc = "–" if t["accuracy"] is None else f"{t['accuracy']:.3f}"
        ms = "–" if t["ms_per_input"] is None else f"{t['ms_per_input']:.2f}"
        table.add_row(t["name"], f"{t['min_confidence']:.3f}", f"{t['reached_share']:.1%}", f"{t['share']:.1%}",
                      acc, f"{alone[t['name']]:.3f}" if t["name"] in alone else "–", ms)
    out.print(table)
    best = max(alone.items(), key=lambda kv: kv[1]) if alone else None
    line = f"cascade accuracy {res['accuracy']:.3f}"
    if best is not None:
        line += f" vs the best model alone ({best[0]}) {best[1]:.3f}"
    out.print(line + (f"; written to {out_file}" if out_file else ""))
