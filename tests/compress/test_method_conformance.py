"""Every registered quantization method, weight format and calibrator through one table of checks.

The table is read from the registries (``transform_types("quantize")``, ``FORMATS``, ``CALIBRATORS``), so a
method registered anywhere is checked with no edit here. Each case quantizes the same tiny model and must:

- round-trip through safetensors bit-exactly (a skeleton built from the config loads the saved state);
- report every module that holds parameters, as changed or as skipped with a reason;
- stay below its format's ``error_bound``: round to nearest on a reference matrix, and every layer any
  method or calibrator quantized;
- export to ONNX and run in ONNX Runtime as in PyTorch, where its format declares ``onnx_bits``;
- give a row the same output whatever the batch it comes in, within its format's ``batch_rtol``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from _tiny import Tiny
from _tiny import conformance_ids as _ids
from _tiny import conformance_model as _model
from nnforge.compress import (
    CALIBRATORS,
    FORMATS,
    WeightOnlyConfig,
    apply_,
    needs_calibration,
    quantize_,
    transform_types,
)
from nnforge.compress.quantize.kernels import PackedWeight
from nnforge.compress.quantize.weight_only import quantize_matrix
from nnforge.config import CONFIG_TYPES, Config


def _cases() -> list[Any]:
    """One config per registered method (its defaults), per format (asymmetric where it can be, groups of 64
    where it has them) and per calibrator (int4, groups of 64)."""
    cases = [pytest.param(CONFIG_TYPES.get(name)(), id=f"method-{name}") for name in transform_types("quantize")]
    for name, spec in FORMATS.items():
        cfg = WeightOnlyConfig(fmt=name, group_size=64 if spec.grouped else None, symmetric=not spec.asymmetric_ok,
                               calibrator="rtn", embedding_fmt=name)
        cases.append(pytest.param(cfg, id=f"format-{name}"))
    for name in CALIBRATORS.names():
        cases.append(pytest.param(WeightOnlyConfig(fmt="int4", group_size=64, calibrator=name), id=f"calibrator-{name}"))
    return cases


CASES = _cases()


_DONE: dict[str, tuple[Tiny, Any]] = {}


def _quantized(cfg: Config) -> tuple[Tiny, Any]:
    """The tiny model quantized with ``cfg``, and the report: made once per config (AWQ and GPTQ are the slow
    part of this file), then only read."""
    key = json.dumps(cfg.to_dict(), sort_keys=True)
    if key not in _DONE:
        model = _model()
        inputs = {"calibration": [_ids(8, seed=s) for s in range(4)]} if needs_calibration(cfg) else {}
        _DONE[key] = model, quantize_(model, cfg, **inputs)
    return _DONE[key]


def _formats(model: nn.Module) -> set[str]:
    return {m.packed.fmt for m in model.modules() if isinstance(getattr(m, "packed", None), PackedWeight)}


@pytest.mark.parametrize("cfg", CASES)
def test_save_load_round_trip_is_bit_exact(cfg: Config, tmp_path) -> None:
    model, _ = _quantized(cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "m.safetensors"))
    skeleton = _model(seed=7)  # other float weights: everything must come from the file
    apply_(skeleton, cfg, skeleton=True)
    skeleton.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
    loaded = skeleton.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    ids = _ids(4)
    with torch.no_grad():
        assert torch.equal(skeleton(ids), model(ids))


@pytest.mark.parametrize("cfg", CASES)
def test_report_lists_every_module_it_did_not_change(cfg: Config) -> None:
    original = _model()
    holders = {n for n, m in original.named_modules() if n and any(True for _ in m.parameters(recurse=False))}
    model, report = _quantized(cfg)
    changed = {c.name for c in report.changed}
    skipped = dict(report.skipped)
    assert changed, "nothing was quantized"
    assert changed | set(skipped) == holders, sorted(holders - changed - set(skipped))
    assert not changed & set(skipped)
    assert all(reason.strip() for reason in skipped.values())
    assert {"norm", "conv"} <= set(skipped)  # kept in float, and a layer type no method here handles
    for c in report.changed:
        packed = getattr(model.get_submodule(c.name), "packed", None)
        assert c.bytes_after < c.bytes_before, c
        if isinstance(packed, PackedWeight):  # whatever the method and calibrator: below its format's bound
            assert 0.0 < c.error < FORMATS.get(packed.fmt).error_bound, (c.name, packed.fmt, c.error)


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_error_on_the_reference_matrix_is_below_the_format_bound(fmt: str) -> None:
    """Round to nearest on a standard normal 128 x 256 matrix: per row and grouped, symmetric and not."""
    spec = FORMATS.get(fmt)
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(0))
    errors = {}
    for group in (None, 64) if spec.grouped else (None,):
        for symmetric in (True, False) if spec.asymmetric_ok else (True,):
            packed, _ = quantize_matrix(w, fmt, group, symmetric, "rtn")
            errors[group, symmetric] = float((w - packed.dequantize()).norm() / w.norm())
    worst = max(errors, key=errors.__getitem__)
    assert 0.0 < errors[worst] < spec.error_bound, (fmt, worst, errors[worst], spec.error_bound)


ONNX_FORMATS = [name for name, spec in FORMATS.items() if spec.onnx_bits is not None]


@pytest.mark.parametrize("fmt", ONNX_FORMATS)
def test_onnx_export_runs_as_in_pytorch_where_the_format_declares_it(fmt: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from nnforge.deploy.onnx import export_onnx

    model = _model()
    spec = FORMATS.get(fmt)
    quantize_(model, WeightOnlyConfig(fmt=fmt, group_size=64 if spec.grouped else None, embedding_fmt=fmt,
                                      symmetric=not spec.asymmetric_ok, kernel=False))
    ids = _ids(2)
    with torch.no_grad():
        ref = model(ids).numpy()
    path = export_onnx(model, tmp_path / "m.onnx", (ids,), input_names=["ids"], accuracy_level=0)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids.numpy()})[0]
    assert abs(out - ref).max() < 1e-4 * max(1.0, float(abs(ref).max()))


@pytest.mark.parametrize("cfg", CASES)
def test_a_row_gives_the_same_output_whatever_its_batch(cfg: Config) -> None:
    """Issue 18, item 5: ``model(x[:1])`` equals ``model(x)[:1]`` within the tolerance the formats declare,
    across the batch sizes where the layer once switched arithmetic (64 rows and more)."""
    model, _ = _quantized(cfg)
    rtol = min((FORMATS.get(f).batch_rtol for f in _formats(model)), default=1e-5)
    x = _ids(65)  # 195 rows into each Linear; a row alone is 3
    with torch.no_grad():
        full = model(x)
        for batch in (1, 63, 64):
            part = model(x[:batch])
            scale = full[:batch].abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
            rel = float(((part - full[:batch]).abs() / scale).max())
            assert rel <= rtol, (batch, rel, rtol)
