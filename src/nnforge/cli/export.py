"""``nnforge export RUN --format onnx|web``: a finished run's model as a verified ONNX file or a static web page.

The export is checked against PyTorch on real inputs from the run's own data (its test split; for a char-lm,
windows of the validation text) and recorded in the run's ledger as a ``model.exported`` event: the files with
their sha256, the opset, the runtime versions and the verification numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nnforge.cli._common import out, print_json, run_ledger, texts_sha256

if TYPE_CHECKING:
    from nnforge.recipes.runs import Run

FORMATS = ("onnx", "web")


def _verification_inputs(run: Run, family: str, n: int, block_size: int | None) -> tuple[Any, dict[str, Any]]:
    """Up to ``n`` real inputs from the run's data, spread evenly over its test split, and what they were."""
    import hashlib

    import numpy as np
    import torch
    import yaml

    from nnforge.data import CharCorpus, TextClassification
    from nnforge.errors import DataError
    from nnforge.recipes.runner import load_data
    from nnforge.recipes.schema import parse_recipe

    source = run.config.get("recipe_source") or ""
    recipe = parse_recipe(yaml.safe_load(source) if source else run.config.get("recipe"), source=source)
    splits, dataset = load_data(recipe)
    if isinstance(dataset, CharCorpus):
        if family != "char-lm" or not block_size:
            raise DataError(f"run {run.run_id}: its data is a character corpus but its model is a {family}")
        x, _ = dataset.batch("val", n, min(block_size, len(dataset.val) - 2), torch.Generator().manual_seed(0))
        return x, {"split": "val", "windows": len(x), "tokens": int(x.shape[1]), "seed": 0,
                   "sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest()}
    if isinstance(dataset, TextClassification):
        texts = list(splits["test"].texts)
        if family != "text-classifier":
            raise DataError(f"run {run.run_id}: its data is text but its model is a {family}")
        pick = np.unique(np.linspace(0, len(texts) - 1, min(n, len(texts))).round().astype(int)).tolist()
        chosen = [texts[i] for i in pick]
        return chosen, {"split": recipe.data.test_split, "texts": len(chosen), "sha256": texts_sha256(chosen)}
    split = recipe.data.test_split
    if split not in dataset.splits:
        raise DataError(f"run {run.run_id}: its data has no split {split!r} to verify the export on; it has "
                        f"{sorted(dataset.splits)}")
    xs = np.asarray(dataset.splits[split][0])
    pick = np.unique(np.linspace(0, len(xs) - 1, min(n, len(xs))).round().astype(int))
    x = torch.from_numpy(xs[pick]).float()
    return x, {"split": split, "rows": len(x), "sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest()}


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
    from nnforge.deploy.export import ExportConfig, check_export_folder, export_model, family_of
    from nnforge.errors import ConfigError
    from nnforge.ledger import Ledger
    from nnforge.recipes import load_run
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
    family = family_of(model)
    block = getattr(getattr(model, "config", None), "block_size", None)
    inputs, about = _verification_inputs(loaded, family, verify, block)
    used = loaded.used(name)
    options = {"int8_matmul": int8_matmul} if int8_matmul is not None else {}
    result = export_model(model, folder, inputs, ExportConfig(format=format_, **options),  # type: ignore[arg-type]
                          label_names=loaded.label_names or None, family=family, source=used)
    m = result.manifest
    check = {k: m["verification"][k] for k in ("inputs", "compared", "max_abs_logit_diff", "max_abs_logit",
                                               "rel_logit_diff", "argmax_agreement", "tolerance", "passed")}
    event = {**used, "format": format_, "int8_matmul": m.get("int8_matmul", int8_matmul), "family": family, "folder": str(folder.resolve()), "files": result.files,
             "opset": m["opset"], "operators": m["operators"], "versions": m["versions"],
             "inputs": about, "verification": check}
    with Ledger.open(run_ledger(ledger, loaded.path, create=True), actor=actor) as led:
        led.append("model.exported", event, run=loaded.run_id)
    if json_:
        print_json({**event, "manifest": str(folder / "export.json")})
        return
    page = f"; open {folder / 'index.html'} through a web server (python -m http.server)" if format_ == "web" else ""
    out.print(f"exported {loaded.run_id} {name} ({family}) as {format_} to {folder}{page}\n"
              f"verified on {check['inputs']} {about['split']} inputs: largest logit difference "
              f"{check['max_abs_logit_diff']:.3g} ({check['rel_logit_diff']:.3g} of the largest logit, allowed "
              f"{check['tolerance']['rel_logit_diff']:g}), argmax agreement {check['argmax_agreement']:.4f}",
              markup=False)
