"""ONNX export of quantized models: MatMulNBits / QDQ graphs that ONNX Runtime runs with PyTorch's fidelity."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from nnforge.compress import W8A8Config, WeightOnlyConfig, quantize_
from nnforge.errors import ConfigError

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from nnforge.deploy.onnx import export_onnx  # noqa: E402


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 256)
        self.fc1 = nn.Linear(256, 512)
        self.fc2 = nn.Linear(512, 64)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(ids))))


CONFIGS = [WeightOnlyConfig(fmt="int8", group_size=None), WeightOnlyConfig(fmt="int4", group_size=32),
           WeightOnlyConfig(fmt="int4", group_size=64, symmetric=False, calibrator="hqq"),
           WeightOnlyConfig(fmt="int3", group_size=64), WeightOnlyConfig(fmt="int2", group_size=64, symmetric=False),
           WeightOnlyConfig(fmt="ternary", group_size=None),
           WeightOnlyConfig(fmt="binary", group_size=None, embedding_fmt="int4", embedding_group_size=32),
           WeightOnlyConfig(fmt="int4", group_size=32, symmetric=False, embedding_fmt="int4", embedding_group_size=32,
                            embedding_symmetric=False),
           W8A8Config(smoothing="smoothquant", activations="static")]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: getattr(c, "fmt", "w8a8"))
def test_exported_graph_matches_pytorch_exactly(cfg, tmp_path):
    torch.manual_seed(0)
    model = Net()
    ids = torch.randint(0, 100, (2, 5))
    quantize_(model, cfg, calibration=[ids])
    for mod in model.modules():  # the exact dequantized path: fp32 activations, as ORT at accuracy_level 0
        if hasattr(mod, "kernel"):
            mod.kernel = False
    with torch.no_grad():
        ref = model(ids).numpy()
    path = export_onnx(model, tmp_path / "m.onnx", (ids,), input_names=["ids"],
                       dynamic_axes={"ids": {0: "b", 1: "t"}}, accuracy_level=0)
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert "MatMulNBits" in ops and "MatMul" not in ops and "Gemm" not in ops  # no fp32 matmul left
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"ids": ids.numpy()})[0]
    assert np.abs(out - ref).max() < 1e-4
    longer = torch.randint(0, 100, (3, 9))  # dynamic axes work
    assert sess.run(None, {"ids": longer.numpy()})[0].shape == (3, 9, 64)


def test_int8_activation_compute_keeps_fidelity(tmp_path):
    torch.manual_seed(0)
    model = Net()
    ids = torch.randint(0, 100, (2, 5))
    quantize_(model, WeightOnlyConfig(fmt="int4", group_size=32))
    with torch.no_grad():
        ref = model(ids).numpy().ravel()
    path = export_onnx(copy.deepcopy(model), tmp_path / "m.onnx", (ids,), input_names=["ids"], accuracy_level=4)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids.numpy()})[0].ravel()
    assert float(out @ ref / np.linalg.norm(out) / np.linalg.norm(ref)) > 0.999


def test_failed_export_leaves_no_file(tmp_path):
    model = Net()
    with pytest.raises(Exception):  # noqa: B017  (wrong input type: torch raises its own error)
        export_onnx(model, tmp_path / "m.onnx", ("not a tensor",))
    assert list(tmp_path.iterdir()) == []


def _per_tensor_uint8(x: np.ndarray) -> np.ndarray:
    """ONNX DynamicQuantizeLinear, then back to float: one asymmetric uint8 scale for the whole tensor."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    s = (hi - lo) / 255
    z = np.clip(np.round(-lo / s), 0, 255)
    return (np.clip(np.round(x / s) + z, 0, 255) - z) * s


def test_dynamic_w8a8_as_matmulinteger_computes_what_it_says(tmp_path):
    torch.manual_seed(0)
    model = Net()
    ids = torch.randint(0, 100, (2, 5))
    quantize_(model, W8A8Config(activations="dynamic", smoothing="smoothquant"), calibration=[ids])
    path = export_onnx(model, tmp_path / "m.onnx", (ids,), input_names=["ids"], dynamic_axes={"ids": {0: "b", 1: "t"}},
                       int8_matmul="integer")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("DynamicQuantizeLinear") == 2 and "MatMulNBits" not in ops
    # the same computation in numpy: smoothing scale, per-tensor uint8 activations, int8 weights, fp32 bias
    with torch.no_grad():
        x = model.emb(ids).numpy()
        for fc in (model.fc1, model.fc2):
            xs = _per_tensor_uint8(x / fc.input_scale.numpy())
            x = xs @ fc.packed.dequantize().numpy().T + fc.bias.numpy()
            if fc is model.fc1:
                x = np.maximum(x, 0)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids.numpy()})[0]
    assert np.abs(out - x).max() < 1e-3 * np.abs(x).max()
    with pytest.raises(ConfigError, match="int8_matmul"):
        export_onnx(model, tmp_path / "n.onnx", (ids,), int8_matmul="int8")
