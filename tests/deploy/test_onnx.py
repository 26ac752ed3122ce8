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


class TinyBert(nn.Module):
    """A 2-layer BERT (random weights, built offline) as (input_ids, attention_mask) -> last hidden state."""

    def __init__(self, attn: str = "sdpa") -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=32, attn_implementation=attn)
        self.m = BertModel(cfg, add_pooling_layer=False).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _bert_batch(b: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 120, (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, t // 2:] = 0  # the first sequence is padded: the mask must reach the fused attention
    return ids, mask


def _export_bert(model: nn.Module, path, **kwargs):
    ids, mask = _bert_batch(2, 7)
    return export_onnx(model, path, (ids, mask), input_names=["ids", "mask"],
                       dynamic_axes={"ids": {0: "b", 1: "t"}, "mask": {0: "b", 1: "t"}}, **kwargs)


@pytest.mark.parametrize(("quantized", "attn"), [(False, "sdpa"), (True, "sdpa"), (False, "eager")],
                         ids=["fp32", "int8", "fp32-eager-mask"])
def test_bert_attention_is_fused_and_computes_the_same(quantized, attn, tmp_path):
    pytest.importorskip("transformers")
    model = TinyBert(attn)  # sdpa masks are boolean, eager ones additive floats
    if quantized:
        quantize_(model, WeightOnlyConfig(fmt="int8", group_size=None, modules=("linear",)))
        for mod in model.modules():  # fp32 activations, as ORT at accuracy_level 0
            if hasattr(mod, "kernel"):
                mod.kernel = False
    path = _export_bert(model, tmp_path / "fused.onnx", accuracy_level=0)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MultiHeadAttention") == 2 and "Softmax" not in ops
    if quantized:  # query, key and value merged: 4 matmuls per layer instead of 6
        assert ops.count("MatMulNBits") == 2 * 4
        graph = onnx.load(str(path)).graph  # scales stored as fp16 (exact), cast back when ORT loads the file
        made_by = {o: n.op_type for n in graph.node for o in n.output}
        assert all(made_by.get(n.input[2]) == "Cast" for n in graph.node if n.op_type == "MatMulNBits")
    plain = [n.op_type for n in onnx.load(str(_export_bert(model, tmp_path / "plain.onnx", accuracy_level=0,
                                                          fuse_attention=False))).graph.node]
    assert "MultiHeadAttention" not in plain and len(ops) < len(plain) - 40
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    for b, t in ((2, 7), (3, 11), (1, 4)):  # other batch sizes and lengths than the traced ones
        ids, mask = _bert_batch(b, t)
        with torch.no_grad():
            ref = model(ids, mask).numpy()
        out = sess.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})[0]
        assert np.abs(out - ref).max() < 1e-4


def test_w8a8_bert_export_merges_smoothed_qkv_and_routes_per_module(tmp_path):
    pytest.importorskip("transformers")
    model = TinyBert()
    calib = [_bert_batch(4, 9) for _ in range(2)]
    quantize_(model, W8A8Config(activations="dynamic", smoothing="smoothquant", calibrator="gptq"), calibration=calib)
    att = model.m.encoder.layer[0].attention.self
    assert torch.equal(att.query.input_scale, att.value.input_scale)  # one SmoothQuant scale for q, k, v
    path = _export_bert(model, tmp_path / "m.onnx", block_size=32,
                        int8_matmul={"*[0-9].output.dense": "nbits", "*": "integer"})
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # per layer: merged q/k/v, attention output and FFN up as MatMulInteger; FFN down as MatMulNBits
    assert ops.count("MatMulInteger") == 2 * 3 and ops.count("MatMulNBits") == 2
    ids, mask = _bert_batch(3, 8)
    with torch.no_grad():
        ref = model(ids, mask).numpy().ravel()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"ids": ids.numpy(), "mask": mask.numpy()})[0].ravel()
    assert float(out @ ref / np.linalg.norm(out) / np.linalg.norm(ref)) > 0.999
    with pytest.raises(ConfigError, match="block_size"):
        _export_bert(model, tmp_path / "n.onnx", block_size=48)
    with pytest.raises(ConfigError, match="int8_matmul"):
        _export_bert(model, tmp_path / "n.onnx", int8_matmul={"*": "int4"})
    assert not (tmp_path / "n.onnx").exists()


def test_a_quantized_conv_exports_with_its_padding_mode(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU())
    quantize_(model, WeightOnlyConfig(fmt="int8", group_size=None, modules=("conv",)))
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        ref = model(x).numpy()
    path = export_onnx(model, tmp_path / "c.onnx", (x,), input_names=["x"])
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert np.abs(out - ref).max() < 1e-4


def test_static_w8a8_saturates_like_quantizelinear_below_the_calibrated_range(tmp_path):
    """QuantizeLinear(int8) saturates to -128; PyTorch clamped static codes to -127, so an input below the
    calibrated range gave different outputs in ONNX Runtime and in PyTorch."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 16))
    quantize_(m, W8A8Config(activations="static", smoothing="none"), calibration=[torch.randn(32, 64)])
    s = float(m[0].act_scale)
    x = torch.randn(4, 64)
    x[:, 0], x[:, 1] = -200 * s, 200 * s  # both sides clipped
    with torch.no_grad():
        ref = m(x).numpy()
    path = export_onnx(m, tmp_path / "static.onnx", (x,), input_names=["x"], accuracy_level=0)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert np.abs(out - ref).max() < 1e-4
