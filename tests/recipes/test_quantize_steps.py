"""Recipe steps ``calibrate``, ``quantize`` (schemes, calibrators, mixed plan) and ``qat``; saved variants reload."""

from __future__ import annotations

import json

import pytest

from nnforge.cli import main
from nnforge.errors import ConfigError
from nnforge.recipes import load_recipe

RECIPE = """
name: digits-quant
seed: 0
model: {architecture: digits-mlp}
data: {dataset: digits}
steps:
  - train:
      optimizer_options: {lr: 0.003}
      batch_size: 64
      train: {max_steps: 120, schedule: cosine, warmup_steps: 10, eval_every: 60}
  - calibrate: {candidates: [int8, int4, int2], group_size: 32, batches: 4, budget: 7.0}
  - quantize: {scheme: int4, calibrator: gptq, group_size: 32, calibration_batches: 4}
  - quantize: {scheme: mixed, group_size: 32}
  - quantize: {scheme: w8a8, activations: static, calibration_batches: 4}
  - qat:
      optimizer_options: {lr: 0.003}
      batch_size: 64
      train: {max_steps: 80, eval_every: 40}
      qat: {fmt: ternary}
metadata: {intended_purpose: test}
"""


def test_quantize_calibrate_and_qat_steps_run_save_and_reload(workdir, capsys):
    (workdir / "r.yaml").write_text(RECIPE, encoding="utf-8")
    assert main(["run", "r.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = out["metrics"]
    assert m["int4_modules_quantized"] >= 2 and m["mixed_avg_bits"] <= 7.0
    sens = json.loads((workdir / out["run_dir"] / "sensitivity.json").read_text())
    assert set(sens["plan"]["formats"].values()) <= {"int8", "int4", "int2"}
    import nnforge

    run = nnforge.load_run(out["run_dir"])
    assert {"fp32", "int4", "mixed", "w8a8", "qat-ternary"} <= set(run.variants)
    for variant in ("int4", "mixed", "w8a8", "qat-ternary"):
        model = run.model(variant)
        kinds = {type(mod).__name__ for mod in model.modules()}
        assert "QuantizedLinear" in kinds, variant


def test_quantize_step_options_are_validated():
    with pytest.raises(ConfigError, match="symmetric only"):
        load_recipe("digits", ["steps=[{quantize: {scheme: ternary, symmetric: false}}]"])
    with pytest.raises(ConfigError, match="scheme"):
        load_recipe("digits", ["steps=[{quantize: {scheme: int5}}]"])


@pytest.mark.parametrize(("step", "message"), [
    ("{scheme: w8a8, calibrator: awq}", "calibrator 'awq' does not apply to scheme w8a8"),
    ("{scheme: w8a8, group_size: 32}", "group_size 32 does not apply to scheme w8a8"),
    ("{scheme: w8a8, symmetric: false}", "symmetric false does not apply"),
    ("{scheme: w8a8, embedding_fmt: int4}", "embedding_fmt does not apply"),
    ("{scheme: int4, activations: static}", "activations applies to scheme w8a8 only"),
    ("{scheme: int8, smoothing: none}", "smoothing applies to scheme w8a8 only"),
])
def test_quantize_step_refuses_options_its_scheme_ignores(step, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("digits", [f"steps=[{{quantize: {step}}}]"])


def test_w8a8_step_passes_its_calibrator_through():
    from nnforge.recipes.steps.quantize import QuantizeStepConfig

    # calibrator: gptq was silently dropped (the w8a8 variant was rounded to nearest)
    assert QuantizeStepConfig(scheme="w8a8", calibrator="gptq").qconfig().calibrator == "gptq"
    assert QuantizeStepConfig(scheme="w8a8", embeddings=False).qconfig().calibrator == "rtn"
