"""``nnforge moe routing RUN``: how a finished run's mixture-of-experts model routes each document group of its
corpus (which experts serve comedy, tragedy, history, the poems), and with ``--before VARIANT`` how far the
routing moved between two of its variants (an upcycled start and the trained model, the model before and after
expert removal). Read-only: the model is loaded (its files checked against the ledger) and nothing is written."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nnforge.cli._common import out, print_json

app = typer.Typer(help="Inspect mixture-of-experts models.", no_args_is_help=True)


def _corpus(run: Any) -> Any:
    from nnforge.data import CharCorpus, load
    from nnforge.errors import DataError

    spec = (run.config.get("recipe") or {}).get("data") or {}
    if not spec.get("dataset"):
        raise DataError(f"run {run.run_id} records no dataset in its recipe")
    corpus = load(spec["dataset"], **(spec.get("options") or {}))
    if not isinstance(corpus, CharCorpus) or not corpus.groups:
        raise DataError(f"nnforge moe routing reads a character corpus with document groups (shakespeare-char); run "
                        f"{run.run_id} trained on {spec['dataset']!r}")
    return corpus


@app.command("routing")
def routing(run: Annotated[str, typer.Argument(help="Run folder or run id.")],
            variant: Annotated[str | None, typer.Option(help="The variant to inspect (default: the final one).")] = None,
            before: Annotated[str | None, typer.Option(help="Also compare with this variant's routing (drift).")] = None,
            batches: Annotated[int, typer.Option(min=1, max=1000, help="Batches per document group.")] = 8,
            seed: Annotated[int, typer.Option(help="Seeds the windows drawn from each group.")] = 0,
            json_: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
            runs_dir: Annotated[str, typer.Option(help="Folder where run ids are looked up.")] = "runs",
            ledger: Annotated[str | None, typer.Option(help="Ledger database (default: the run's own).")] = None,
            allow_modified: Annotated[bool, typer.Option("--allow-modified", help="Use the run even if its files "
                                                         "differ from what the ledger recorded.")] = False) -> None:
    """Experts serving each document group of the run's corpus, per MoE layer (and the drift from --before)."""
    import torch
    from rich.table import Table

    from nnforge.errors import ConfigError
    from nnforge.moe import MoE
    from nnforge.moe.diagnostics import routing_by_slice, routing_drift
    from nnforge.recipes import load_run

    loaded = load_run(run, runs_dir, ledger=ledger, allow_modified=allow_modified, use="moe-routing")
    name = variant or loaded.config.get("final_variant") or next(reversed(loaded.variants))
    model = loaded.model(name)
    if not any(isinstance(m, MoE) for m in model.modules()):
        raise ConfigError(f"variant {name!r} of run {loaded.run_id} has no MoE layer; variants: {sorted(loaded.variants)}")
    corpus = _corpus(loaded)
    block = int(getattr(getattr(model, "config", None), "block_size", 64))
    gen = torch.Generator().manual_seed(seed)
    slices = {g: corpus.group_batches(g, batches, 12, block, gen) for g in corpus.groups}
    forward = lambda m, b: m(b[0])  # noqa: E731
    by = routing_by_slice(model, slices, forward=forward).to_dict()
    doc: dict[str, Any] = {"run": loaded.run_id, "variant": name, "by_group": by}
    if before is not None:
        windows = [b for group in slices.values() for b in group[:2]]
        doc["before"] = before
        doc["drift"] = [d.to_dict() for d in routing_drift(loaded.model(before), model, windows, forward=forward)]
    if json_:
        print_json(doc)
        return
    table = Table(title=f"{loaded.run_id} / {name}: experts serving each document group (load >= 1/E)")
    for column in ("group", "layer", "serving experts", "load per expert"):
        table.add_column(column)
    for group, layers in by["serving"].items():
        for layer, experts in layers.items():
            load = " ".join(f"{x:.2f}" for x in by["load"][group][layer])
            table.add_row(group, layer, ", ".join(map(str, experts)), load)
    out.print(table)
    if doc.get("drift"):
        drift = Table(title=f"routing drift from {before} to {name}")
        for column in ("layer", "top-1 unchanged", "top-k overlap", "load shift"):
            drift.add_column(column)
        for d in doc["drift"]:
            drift.add_row(d["layer"], f"{d['top1_agreement']:.3f}", f"{d['topk_overlap']:.3f}", f"{d['load_shift']:.3f}")
        out.print(drift)
