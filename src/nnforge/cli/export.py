"""``nnforge export RUN --format onnx|web``: a finished run's model as a verified ONNX file or a static web page.

The export is checked against PyTorch on real inputs from the run's own data (its test split; for a char-lm,
windows of the validation text) and recorded in the run's ledger as a ``model.exported`` event: the files with
their sha256, the opset, the runtime versions and the verification numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nnforge.cli._common import out, print_json, run_ledger

if TYPE_CHECKING:
    pass

FORMATS = ("onnx", "web")


def export(
    run: Annotated[str, typer.Argument(help="Run folder or run id.")],
    format_: Annotated[str, typer.Option("--format", help="onnx: model.onnx + export.json; web: a static page "
                                                          "that runs the model in the browser.")] = "onnx",
    variant: Annotated[str | None, typer.Option(help="Model variant (default: the run's final one).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder to write (default: RUN/export/VARIANT-FORMAT; "
                                                               "an earlier export there is replaced).")] = None,
    verify: Annotated[int, typer.Option("--verify", help="Real inputs from the run's test split to verify the export "
                                                         "on.")] = 64,
    int8_matmul: Annotated[str | None, typer.Option("--int8-matmul", help="How int8 layers are written: rowwise "
                                                    "(PyTorch's arithmetic, standard operators; runs in the "
                                                    "browser), nbits (MatMulNBits) or integer (MatMulInteger).")] = None,
    runs_dir: Annotated[str, typer.Option(help="Folder where run ids are looked up.")] = "runs",
    ledger: Annotated[str | None, typer.Option(help="Ledger that records the export (default: the run's own).")] = None,
    actor: Annotated[str | None, typer.Option(help="Who runs this (default: the OS user).")] = None,
    allow_modified: Annotated[bool, typer.Option("--allow-modified", help="Export even if a run file differs from "
                                                 "what the ledger recorded (the choice is recorded).")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Export a finished run's model as ONNX or as a web page, verified against PyTorch on the run's test data;
    the files, versions and verification go to export.json and to the ledger (model.exported)."""
    import yaml

    from nnforge.deploy.export import ExportConfig, check_export_folder
    from nnforge.errors import ConfigError
    from nnforge.ledger import Ledger
    from nnforge.recipes import load_run
    from nnforge.recipes.export_run import export_variant
    from nnforge.recipes.runner import load_data
    from nnforge.recipes.schema import parse_recipe
    from nnforge.runs import NATIVE_SUFFIX

    if format_ not in FORMATS:
        raise ConfigError(f"--format {format_!r}: must be one of {', '.join(FORMATS)}")
    if verify < 1:
        raise ConfigError(f"--verify {verify}: must be at least 1 (inputs to verify the export on)")
    if out_dir is not None:
        check_export_folder(out_dir)  # before minutes of work
    loaded = load_run(run, runs_dir, ledger=ledger, allow_modified=allow_modified, actor=actor, use="export")
    name = variant or loaded.config.get("final_variant") or next(reversed(loaded.variants), None)
    if name is None:
        raise ConfigError(f"run {loaded.path} saved no model to export")
    if name not in loaded.variants:
        hint = (f"; '{name}' runs in nnforge's native runtime: export its saved variant "
                f"'{name[: -len(NATIVE_SUFFIX)]}'" if name.endswith(NATIVE_SUFFIX) else "")
        raise ConfigError(f"--variant {name!r}: run {loaded.run_id} has the variants {sorted(loaded.variants)}{hint}")
    folder = out_dir if out_dir is not None else loaded.path / "export" / f"{name}-{format_}"
    model = loaded.model(name)
    source = loaded.config.get("recipe_source") or ""
    recipe = parse_recipe(yaml.safe_load(source) if source else loaded.config.get("recipe"), source=source)
    splits, dataset = load_data(recipe)
    options = {"int8_matmul": int8_matmul} if int8_matmul is not None else {}
    config = ExportConfig(format=format_, **options)  # type: ignore[arg-type]
    with Ledger.open(run_ledger(ledger, loaded.path, create=True), actor=actor) as led:
        _, event = export_variant(model, folder, recipe=recipe, splits=splits, dataset=dataset, config=config,
                                  verify=verify, label_names=loaded.label_names, source=loaded.used(name),
                                  run_id=loaded.run_id, ledger=led)
    family, check, about = event["family"], event["verification"], event["inputs"]
    if json_:
        print_json({**event, "manifest": str(folder / "export.json")})
        return
    page = f"; open {folder / 'index.html'} through a web server (python -m http.server)" if format_ == "web" else ""
    out.print(f"exported {loaded.run_id} {name} ({family}) as {format_} to {folder}{page}\n"
              f"verified on {check['inputs']} {about['split']} inputs: largest logit difference "
              f"{check['max_abs_logit_diff']:.3g} ({check['rel_logit_diff']:.3g} of the largest logit, allowed "
              f"{check['tolerance']['rel_logit_diff']:g}), argmax agreement {check['argmax_agreement']:.4f}",
              markup=False)
