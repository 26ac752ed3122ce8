"""``nnforge predict``, ``nnforge embed``, ``nnforge report``: use and inspect finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from nnforge.cli._common import console, out, print_json, read_text_lines, record_cli, run_ledger, safe, texts_sha256

if TYPE_CHECKING:
    from nnforge.recipes.runs import Run

TextOpt = Annotated[list[str] | None, typer.Option("--text", "-t", help="A text (repeat for several).")]
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="A file with one text per line.")]
VariantOpt = Annotated[str | None, typer.Option(help="Model variant (fp32, int8, …; int8-native: int8 in the native runtime); default: the final one.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]
LedgerOpt = Annotated[str | None, typer.Option(help="Ledger database that records this call (default: the run's own).")]
ActorOpt = Annotated[str | None, typer.Option(help="Who runs this (default: the OS user).")]
RunsDirOpt = Annotated[str, typer.Option(help="Folder where run ids are looked up.")]
InputsOpt = Annotated[Path | None, typer.Option(
    "--inputs", help="For a model over tensors (images, tables): a .npz (array x), .npy or CSV file of inputs, one "
                     "example per row (a CSV's label column, if any, is left out).")]
AllowModifiedOpt = Annotated[bool, typer.Option("--allow-modified", help="Use the run even if its files differ from what the ledger recorded (the choice is recorded).")]


def _used(run: Run, variant: str | None) -> dict[str, object]:
    """The run, variant and weights file (by sha256) a command used."""
    from nnforge.ledger import file_sha256

    name = variant or run.config.get("final_variant") or next(reversed(run.variants))
    path = run.variant_file(name)
    return {"run": run.run_id, "variant": name, "weights": str(path), "weights_sha256": file_sha256(path)}


def _one_field(text: str) -> str:
    """A text as one tab-separated field on one line: tabs, newlines and control characters escaped."""
    return safe(text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n"))


def _texts(text: list[str] | None, file: Path | None) -> list[str]:
    from nnforge.errors import DataError

    texts = list(text or [])
    for k, t in enumerate(texts):
        if not t.strip():
            raise DataError(f"--text number {k + 1} is empty; give a text to classify")
    if file is not None:
        texts += read_text_lines(file)
    if not texts:
        raise DataError("give at least one --text or a --file with one text per line")
    return texts


def predict(run: Annotated[str, typer.Argument(help="Run folder or run id.")], text: TextOpt = None,
            file: FileOpt = None, inputs: InputsOpt = None, variant: VariantOpt = None, json_: JsonOpt = False,
            ledger: LedgerOpt = None, actor: ActorOpt = None, runs_dir: RunsDirOpt = "runs",
            allow_modified: AllowModifiedOpt = False) -> None:
    """Classify texts (--text, --file) or tensors (--inputs) with a finished run's model (recorded in the ledger)."""
    from collections import Counter

    from nnforge.errors import DataError
    from nnforge.recipes import load_run

    if inputs is not None and (text or file is not None):
        raise DataError("give texts (--text, --file) or --inputs, not both")
    loaded = load_run(run, runs_dir, ledger=ledger, allow_modified=allow_modified, actor=actor, use="predict")
    is_text = hasattr(loaded.model(variant), "predict_proba")
    if inputs is not None or not is_text:
        _predict_tensors(loaded, inputs, variant, json_, ledger, actor, is_text)
        return
    texts = _texts(text, file)
    rows = loaded.predict(texts, variant, record=False)
    record_cli("predict", {**_used(loaded, variant), "inputs": {"texts": len(texts), "sha256": texts_sha256(texts)},
                           "results": dict(Counter(row["label"] for row in rows))},
               ledger=run_ledger(ledger, loaded.path, create=True), actor=actor, run=loaded.run_id)
    if json_:
        print_json(rows)
        return
    for r in rows:  # tab-separated (label, confidence, text), one line per text: plain print keeps the tabs
        print(f"{r['label']}\t{r['confidence']:.3f}\t{_one_field(r['text'])}")


def _predict_tensors(run: Run, inputs: Path | None, variant: str | None, json_: bool, ledger: str | None,
                     actor: str | None, is_text: bool) -> None:
    """``nnforge predict RUN --inputs FILE`` for a model over tensors: label and confidence per row."""
    from collections import Counter

    from nnforge.cli._arrays import read_inputs, tensor_rows
    from nnforge.errors import DataError
    from nnforge.ledger import file_sha256

    if is_text:
        raise DataError(f"run {run.run_id}'s model classifies texts: give --text or --file, not --inputs")
    if inputs is None:
        raise DataError(f"run {run.run_id}'s model reads tensors, not texts: give --inputs FILE (.npz with array x, "
                        ".npy, or CSV of features)")
    x = read_inputs(inputs, run.config)
    rows = tensor_rows(run.model(variant), x, run.label_names)
    record_cli("predict", {**_used(run, variant), "inputs": {"file": str(inputs), "rows": len(rows),
                                                             "sha256": file_sha256(inputs)},
                           "results": dict(Counter(str(r["label"]) for r in rows))},
               ledger=run_ledger(ledger, run.path, create=True), actor=actor, run=run.run_id)
    if json_:
        print_json(rows)
        return
    for r in rows:  # tab-separated (label, confidence, row index)
        print(f"{r['label']}\t{r['confidence']:.3f}\t{r['index']}")


def embed(run: Annotated[str, typer.Argument(help="Run folder or run id.")], text: TextOpt = None,
          file: FileOpt = None, variant: VariantOpt = None, json_: JsonOpt = False, ledger: LedgerOpt = None,
          actor: ActorOpt = None, runs_dir: RunsDirOpt = "runs", allow_modified: AllowModifiedOpt = False) -> None:
    """L2-normalised sentence embeddings from a finished run's encoder (the call is recorded in the ledger)."""
    from nnforge.recipes import load_run

    r = load_run(run, runs_dir, ledger=ledger, allow_modified=allow_modified, actor=actor, use="embed")
    if not hasattr(r.model(variant), "embed"):
        from nnforge.errors import ModelError

        raise ModelError(f"run {r.run_id}'s model ({type(r.model(variant)).__name__}) has no embed(texts): nnforge "
                         "embed is for text encoders; for a model over tensors use nnforge predict --inputs FILE")
    texts = _texts(text, file)
    vectors = r.embed(texts, variant, record=False)
    record_cli("embed", {**_used(r, variant), "inputs": {"texts": len(texts), "sha256": texts_sha256(texts)},
                         "results": {"vectors": len(texts), "dims": int(vectors.shape[1])}},
               ledger=run_ledger(ledger, r.path, create=True), actor=actor, run=r.run_id)
    if json_:
        print_json([{"text": t, "embedding": [round(x, 6) for x in v.tolist()]} for t, v in zip(texts, vectors, strict=True)])
        return
    for t, v in zip(texts, vectors, strict=True):
        head = " ".join(f"{x:+.3f}" for x in v[:6].tolist())
        print(f"[{head} … ] ({len(v)} dims)\t{_one_field(t)}")


def report(run_dir: Annotated[str, typer.Argument(help="Run folder or run id.")],
           ledger: Annotated[str | None, typer.Option(help="Ledger database (default: the one the run wrote to).")] = None,
           actor: ActorOpt = None, runs_dir: RunsDirOpt = "runs") -> None:
    """Render (again) the HTML report of a run from its files and the ledger (recorded in the ledger). Exit 1
    when the ledger chain does not verify or metrics.json differs from the recorded metrics (the report is still
    written, saying so), as `nnforge docs` does."""
    from nnforge.govern.report import write_checked_report
    from nnforge.ledger import Ledger, file_sha256
    from nnforge.recipes.runs import find_run

    folder = find_run(run_dir, runs_dir)
    loc = run_ledger(ledger, folder)
    led = Ledger.open(loc)
    try:
        path, rendered = write_checked_report(folder, led)
    finally:
        led.close()
    record_cli("report", {"run_dir": str(folder), "output": str(path), "sha256": file_sha256(path)},
               ledger=loc, actor=actor, run=folder.name)
    out.print(f"report: {path}")
    verification, altered = rendered.verification, rendered.altered
    if not verification.ok:
        console.print(f"[red bold]ledger chain BROKEN[/] at event #{verification.broken_seq}: "
                      f"{escape(verification.reason)}; the report carries this warning")
    if altered:
        console.print(f"[red bold]metrics.json was ALTERED[/] after the ledger recorded it ({escape(', '.join(altered))}); "
                      "the report shows the recorded values and carries this warning")
    if altered or not verification.ok:
        raise typer.Exit(1)
