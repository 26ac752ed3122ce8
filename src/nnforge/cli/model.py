"""``nnforge predict``, ``nnforge embed``, ``nnforge report``: use and inspect finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nnforge.cli._common import ledger_location, out, print_json

TextOpt = Annotated[list[str] | None, typer.Option("--text", "-t", help="A text (repeat for several).")]
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="A file with one text per line.")]
VariantOpt = Annotated[str | None, typer.Option(help="Model variant (fp32, int8, …); default: the final one.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


def _texts(text: list[str] | None, file: Path | None) -> list[str]:
    from nnforge.errors import DataError

    texts = list(text or [])
    if file is not None:
        if not file.is_file():
            raise DataError(f"{file}: no such file")
        texts += [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not texts:
        raise DataError("give at least one --text or a --file with one text per line")
    return texts


def predict(run: Annotated[str, typer.Argument(help="Run folder or run id.")], text: TextOpt = None,
            file: FileOpt = None, variant: VariantOpt = None, json_: JsonOpt = False) -> None:
    """Classify texts with a finished run's model."""
    from nnforge.recipes import load_run

    rows = load_run(run).predict(_texts(text, file), variant)
    if json_:
        print_json(rows)
        return
    for r in rows:
        out.print(f"{r['label']}\t{r['confidence']:.3f}\t{r['text']}", markup=False)


def embed(run: Annotated[str, typer.Argument(help="Run folder or run id.")], text: TextOpt = None,
          file: FileOpt = None, variant: VariantOpt = None, json_: JsonOpt = False) -> None:
    """L2-normalised sentence embeddings from a finished run's encoder."""
    from nnforge.recipes import load_run

    texts = _texts(text, file)
    vectors = load_run(run).embed(texts, variant)
    if json_:
        print_json([{"text": t, "embedding": [round(x, 6) for x in v.tolist()]} for t, v in zip(texts, vectors, strict=True)])
        return
    for t, v in zip(texts, vectors, strict=True):
        head = " ".join(f"{x:+.3f}" for x in v[:6].tolist())
        out.print(f"[{head} … ] ({len(v)} dims)\t{t}", markup=False)


def report(run_dir: Annotated[str, typer.Argument(help="Run folder or run id.")],
           ledger: Annotated[str | None, typer.Option(help="Ledger database.")] = None) -> None:
    """Render (again) the HTML report of a run from its files and the ledger."""
    from nnforge.ledger import Ledger
    from nnforge.ledger.report import write_report
    from nnforge.recipes.runs import find_run

    path = write_report(find_run(run_dir), Ledger.open(ledger_location(ledger)))
    out.print(f"report: {path}")
