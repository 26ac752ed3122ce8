"""``nnforge explain RUN --text … | --index N``: why a finished run's model answered what it did; and
``nnforge explain data RUN --example ID``: which training examples drove an answer.

Each explanation is written as a one-page HTML file (what the model saw, what it answered, what it relied on,
how typical the input is, the closest training examples) and recorded in the run's ledger as a
``model.explained`` event (method, settings, input by sha256, answer, strongest units, the page's sha256).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nnforge.cli._common import out, print_json, run_ledger
from nnforge.cli.model import ActorOpt, AllowModifiedOpt, JsonOpt, LedgerOpt, RunsDirOpt, VariantOpt, _used


def explain(
    args: Annotated[list[str], typer.Argument(help="RUN (a run folder or id), or: data RUN.", metavar="[data] RUN")],
    text: Annotated[list[str] | None, typer.Option("--text", "-t", help="A text to explain (repeat for several).")] = None,
    index: Annotated[list[int] | None, typer.Option("--index", "-i", help="A test example by its index in the run's "
                                                    "test split (char-LM: a validation window's start).")] = None,
    example: Annotated[list[int] | None, typer.Option("--example", "-e", help="explain data: the test example "
                                                      "whose influential training examples are listed.")] = None,
    method: Annotated[str, typer.Option(help="Attribution method (integrated_gradients, gradient_x_input, occlusion, "
                                             "layer_integrated_gradients); explain data: tracin or trak.")] = "",
    target: Annotated[int | None, typer.Option(help="Class to explain (default: the predicted one).")] = None,
    top: Annotated[int, typer.Option(help="Units (or training examples) to list.")] = 8,
    variant: VariantOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for the HTML pages (default: RUN/explain).")] = None,
    json_: JsonOpt = False, ledger: LedgerOpt = None, actor: ActorOpt = None, runs_dir: RunsDirOpt = "runs",
    allow_modified: AllowModifiedOpt = False,
) -> None:
    """Explain a finished run's predictions: feature attribution per input (--text, --index), or training-data
    attribution (explain data RUN --example N); pages under RUN/explain, every explanation in the ledger."""
    from nnforge.errors import ConfigError

    if not args or len(args) > 2 or (len(args) == 2 and args[0] != "data"):
        raise ConfigError("usage: nnforge explain RUN --text … | --index N, or nnforge explain data RUN --example N")
    if args[0] == "data":
        if len(args) != 2:
            raise ConfigError("usage: nnforge explain data RUN --example N")
        _explain_data(args[1], example, method or "trak", top, variant, json_, ledger, actor, runs_dir,
                      allow_modified)
        return
    _explain_features(args[0], text, index, method or "integrated_gradients", target, top, variant, out_dir, json_,
                      ledger, actor, runs_dir, allow_modified)


def _load(run: str, runs_dir: str, ledger: str | None, allow_modified: bool, actor: str | None):  # type: ignore[no-untyped-def]
    import yaml

    from nnforge.recipes import load_run
    from nnforge.recipes.runner import load_data
    from nnforge.recipes.schema import parse_recipe

    loaded = load_run(run, runs_dir, ledger=ledger, allow_modified=allow_modified, actor=actor, use="explain")
    source = loaded.config.get("recipe_source") or ""
    recipe = parse_recipe(yaml.safe_load(source) if source else loaded.config.get("recipe"), source=source)
    splits, dataset = load_data(recipe)
    return loaded, recipe, splits, dataset


def _explain_features(run: str, text: list[str] | None, index: list[int] | None, method: str, target: int | None,
                      top: int, variant: str | None, out_dir: Path | None, json_: bool, ledger: str | None,
                      actor: str | None, runs_dir: str, allow_modified: bool) -> None:
    from nnforge.errors import DataError
    from nnforge.explain.attribution import AttributionConfig
    from nnforge.ledger import Ledger, atomic_write_text
    from nnforge.recipes.explain_run import explain_examples, input_sha256, pick_examples, record_explanations

    if text and index:
        raise DataError("give --text or --index, not both")
    config = AttributionConfig(method=method, target=target)
    loaded, recipe, splits, dataset = _load(run, runs_dir, ledger, allow_modified, actor)
    model = loaded.model(variant)
    examples = pick_examples(model, splits, dataset, texts=text, indices=index, split=recipe.data.test_split)
    used = _used(loaded, variant)
    vocab = getattr(dataset, "vocab", None)
    results = explain_examples(model, examples, config, label_names=loaded.label_names or None, vocab=vocab,
                               guard_dir=loaded.path / "ood-guard", train=splits.get("train"),
                               provenance={"run": loaded.run_id, "variant": used["variant"], "method": method})
    folder = out_dir or loaded.path / "explain"
    folder.mkdir(parents=True, exist_ok=True)
    pages = []
    for r in results:
        page = folder / f"{method}-{input_sha256(r['example'].value)[:12]}.html"
        atomic_write_text(page, r["page"])
        pages.append(page)
    with Ledger.open(run_ledger(ledger, loaded.path, create=True), actor=actor) as led:
        events = record_explanations(led, results, used=used, run_id=loaded.run_id, pages=pages)
    if json_:
        print_json([{**ev, "attribution": r["attribution"].to_dict()} for ev, r in zip(events, results, strict=True)])
        return
    for r, page in zip(results, pages, strict=True):
        a = r["attribution"]
        out.print(f"{r['example'].source}: {a.target_label} (p = {a.probabilities[a.target]:.3f}) by {a.method}"
                  + (f", complete within {a.completeness_error:.2%}" if a.completeness_error is not None else ""),
                  markup=False)
        for sign, what in ((1, "for"), (-1, "against")):
            units = ", ".join(f"{u} {s:+.3g}" for _, u, s in a.top(top, sign=sign) if s * sign > 0)
            out.print(f"  {what}: {units or '-'}", markup=False)
        if r["typicality"] is not None:
            t = r["typicality"]
            out.print(f"  typical: {'yes' if t['in_range'] else 'NO, out of range'} ({t['detector']} score "
                      f"{t['score']:.3g}, threshold {t['threshold']:.3g})", markup=False)
        out.print(f"  page: {page}", markup=False)


def _explain_data(run: str, example: list[int] | None, method: str, top: int, variant: str | None, json_: bool,
                  ledger: str | None, actor: str | None, runs_dir: str, allow_modified: bool) -> None:
    from nnforge.errors import DataError
    from nnforge.ledger import Ledger
    from nnforge.recipes.explain_run import data_attribution, input_sha256, pick_examples

    if not example:
        raise DataError("explain data: give the test example to explain (--example N)")
    loaded, recipe, splits, dataset = _load(run, runs_dir, ledger, allow_modified, actor)
    model = loaded.model(variant)
    examples = pick_examples(model, splits, dataset, indices=example, split=recipe.data.test_split)
    names = loaded.label_names or None
    results = data_attribution(model, splits, dataset, examples, method=method, top=top,
                               split=recipe.data.train_split)
    used = _used(loaded, variant)

    def label(k: int) -> str:
        return names[k] if names and k < len(names) else str(k)

    events = []
    for r in results:
        e = r["example"]
        events.append({**used, "kind": "training-data-attribution", "method": method, "settings": r["settings"],
                       "scope": r["scope"], "input": {"source": e.source, "sha256": input_sha256(e.value)},
                       "target_label": label(r["answer"]),
                       "top_positive": [{"unit": f"train[{h['index']}]", "score": round(h["score"], 6)}
                                        for h in r["helpful"]],
                       "top_negative": [{"unit": f"train[{h['index']}]", "score": round(h["score"], 6)}
                                        for h in r["harmful"]]})
    with Ledger.open(run_ledger(ledger, loaded.path, create=True), actor=actor) as led:
        led.append_many([("model.explained", ev, loaded.run_id, None) for ev in events])
    if json_:
        print_json([{**ev, "helpful": r["helpful"], "harmful": r["harmful"]} for ev, r in zip(events, results,
                                                                                         strict=True)])
        return
    for r in results:
        out.print(f"{r['example'].source}: answered {label(r['answer'])}; {method} over {r['scope']}", markup=False)
        for what in ("helpful", "harmful"):
            out.print(f"  most {what}:", markup=False)
            for h in r[what]:
                text = " ".join(str(h["text"]).split())[:100] if isinstance(h["text"], str) and "\n" not in h["text"] \
                    else str(h["text"])
                out.print(f"    train[{h['index']}] ({label(h['label'])}, {h['score']:+.3g}): {text}", markup=False)
