"""The ``export`` recipe step: a trained and quantized digits model exported as ONNX inside the recipe, verified,
its files hashed into the ledger; a misplaced step is refused before it writes."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

RECIPE = """
name: export-step
seed: 0
model: {architecture: digits-mlp}
data: {dataset: digits}
steps:
  - train: {optimizer: adamw, optimizer_options: {lr: 0.01}, batch_size: 64, train: {max_steps: 30}}
  - quantize: {scheme: int8}
  - export: {format: onnx, verify: 32}
"""


def test_the_export_step_writes_a_verified_recorded_onnx_file(workdir):
    from nnforge.cli import main
    from nnforge.ledger import Ledger

    (workdir / "r.yaml").write_text(RECIPE)
    assert main(["run", "r.yaml"]) == 0
    run_dir = next((workdir / "runs").iterdir())
    folder = run_dir / "export" / "int8-onnx"
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["verification"]["passed"] and manifest["verification"]["inputs"] == 32
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["int8_onnx_export_argmax_agreement"] >= 0.95
    with Ledger.open(workdir / ".nnforge" / "ledger.db") as led:
        events = led.run_events(run_dir.name)
    exported = [e for e in events if e.kind == "model.exported"]
    assert len(exported) == 1 and exported[0].data["variant"] == "int8"
    written = {e.data["name"] for e in events if e.kind == "artifact.written"}
    assert "export:int8-onnx:model.onnx" in written


def test_an_export_step_before_any_model_is_saved_is_refused(workdir):
    from nnforge.cli import main

    (workdir / "r.yaml").write_text(RECIPE.replace("  - train: {optimizer: adamw, optimizer_options: {lr: 0.01}, "
                                                   "batch_size: 64, train: {max_steps: 30}}\n  - quantize: {scheme: "
                                                   "int8}\n", ""))
    assert main(["run", "r.yaml"]) == 2
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())
