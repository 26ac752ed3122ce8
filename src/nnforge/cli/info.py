"""``nnforge recipes``, ``nnforge data list``, ``nnforge env``: what there is, and where we run."""

from __future__ import annotations

from typing import Annotated

import typer

from nnforge.cli._common import out, print_json

data_app = typer.Typer(help="Datasets nnforge knows.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


def recipes(
    name: Annotated[str | None, typer.Argument(help="Show this built-in recipe's YAML.")] = None,
    json_: JsonOpt = False,
) -> None:
    """List the built-in recipes, or show one."""
    import yaml

    from nnforge.recipes import builtin_dir, load_recipe
    from nnforge.recipes.schema import resolve_recipe_path

    if name:
        load_recipe(name)  # a user's file is checked as `run` would check it (YAML, encoding, fields): exit 2
        path = resolve_recipe_path(name)
        text = path.read_text(encoding="utf-8")
        if json_:
            print_json({"name": name, "path": str(path), "recipe": yaml.safe_load(text)})
        else:
            out.print(text, markup=False)
        return
    rows = []
    for f in sorted(builtin_dir().glob("*.yaml")):
        doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        steps = [s if isinstance(s, str) else next(iter(s)) for s in doc.get("steps", [])]
        rows.append({"name": f.stem, "description": " ".join(str(doc.get("description", "")).split()),
                     "steps": steps})
    if json_:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(show_header=True)
    for col in ("recipe", "steps", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["name"]), " → ".join(r["steps"]), str(r["description"]))
    out.print(table)


@data_app.command("list")
def data_list(json_: JsonOpt = False) -> None:
    """List the registered datasets."""
    from nnforge.data import DATASETS

    rows = [{"name": n, "kind": i.kind, "description": i.description, "source": i.source, "options": list(i.options)}
            for n, i in DATASETS.items()]
    if json_:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(show_header=True)
    for col in ("dataset", "kind", "source", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[k]) for k in ("name", "kind", "source", "description")))
    out.print(table)


def env(json_: JsonOpt = False) -> None:
    """Versions, CPU, threads: paste this into bug reports."""
    import importlib.metadata as md

    from nnforge import __version__
    from nnforge.hardware import machine_facts

    facts = {"nnforge": __version__, **machine_facts(), "packages": {}}
    for pkg in ("numpy", "safetensors", "pydantic", "transformers", "peft", "onnx", "onnxruntime", "scikit-learn",
                "matplotlib", "jinja2", "typer", "rich"):
        try:
            facts["packages"][pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            facts["packages"][pkg] = None
    if json_:
        print_json(facts)
        return
    for k, v in facts.items():
        if k == "packages":
            out.print("packages: " + ", ".join(f"{p} {ver or '—'}" for p, ver in v.items()))
        else:
            out.print(f"{k}: {v}")
