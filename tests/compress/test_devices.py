"""Compression off the CPU: packed layers moved with ``.to(device)`` must run (dequantizing per call), never
hand a non-CPU pointer to the compiled CPU kernels, and create no tensor on the CPU behind the caller's back;
a model on a GPU is quantized (packing on the CPU) into layers on that GPU; QAT trains there.

This machine has no GPU, so the ``meta`` device stands in for one: it runs no kernel and refuses any op that
mixes a meta tensor with a CPU one ("Tensor on device cpu is not on the expected device meta"), which is
exactly the mistake a CUDA run would hit; :class:`GpuLikeMeta` (tests/_devices.py) adds CUDA's other rules
and answers the syncs and CPU copies a GPU allows. Before the fix a quantized model on ``meta`` crashed the
process (the compiled kernel read address 0).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _devices import GpuLikeMeta
from _tiny import EmbConvNet
from nnforge.compress import quantize_
from nnforge.compress.quantize import (
    BinaryConfig,
    Int2WeightOnlyConfig,
    Int4WeightOnlyConfig,
    Int8WeightOnlyConfig,
    TernaryConfig,
    W8A8Config,
)
from nnforge.compress.quantize.kernels import qgemv, quantize_weight
from nnforge.compress.quantize.qat import QATConfig, convert_qat_, prepare_qat_
from nnforge.compress.quantize.w8a8.apply import apply_w8a8
from nnforge.compress.quantize.weight_only.apply import apply_weight_only
from nnforge.errors import ConfigError

ALL = ("linear", "embedding", "conv")
CONFIGS = [Int8WeightOnlyConfig(modules=ALL), Int4WeightOnlyConfig(group_size=32, modules=ALL),
           Int4WeightOnlyConfig(group_size=32, symmetric=True, modules=ALL),
           Int2WeightOnlyConfig(group_size=32, modules=ALL), TernaryConfig(modules=ALL), BinaryConfig(modules=ALL)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{type(c).__name__}-{getattr(c, 'symmetric', '')}")
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_quantized_model_runs_on_another_device(config, grad):
    torch.manual_seed(0)
    model = EmbConvNet()
    report = quantize_(model, config)
    assert {c.name for c in report.changed} >= {"emb", "conv", "fc1", "fc2"}
    ids = torch.randint(0, 50, (2, 5))
    with torch.set_grad_enabled(grad):
        ref = model(ids)
        out = model.to("meta")(ids.to("meta"))  # small batch, no grad: the CPU kernel's case on the CPU
    assert out.device.type == "meta" and out.shape == ref.shape == (2, 8)


def test_static_w8a8_model_runs_on_another_device():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    quantize_(model, W8A8Config(activations="static"), calibration=[torch.randn(8, 16) for _ in range(2)])
    with torch.no_grad():
        assert model.to("meta")(torch.randn(3, 16, device="meta")).shape == (3, 4)


def test_qgemv_off_the_cpu_takes_the_torch_path_and_refuses_mixed_devices():
    w = quantize_weight(torch.randn(8, 64), "int4", 32, symmetric=True)
    x = torch.randn(2, 64)
    with pytest.raises(ConfigError, match="x is on meta but the packed weight on cpu"):
        qgemv(x.to("meta"), w)
    w_meta = type(w)(w.fmt, w.data.to("meta"), w.scales.to("meta"), None, w.N, w.K, w.group_size)
    assert qgemv(x.to("meta"), w_meta).shape == (2, 8)


def test_quantized_embedding_refuses_out_of_range_ids_on_the_cpu():
    model = nn.Sequential(nn.Embedding(10, 64))
    quantize_(model, Int8WeightOnlyConfig())
    for bad in (-1, 10):
        with pytest.raises(IndexError, match=r"embedding ids must be in \[0, 10\)"):
            model(torch.tensor([[1, bad]]))


def _buffers_on(model: nn.Module) -> set[str]:
    return {t.device.type for t in (*model.parameters(), *model.buffers())}


@pytest.mark.parametrize("config", CONFIGS[:3], ids=lambda c: f"{type(c).__name__}-{getattr(c, 'symmetric', '')}")
def test_a_model_on_another_device_is_quantized_into_layers_there(config):
    # apply_weight_only itself (quantize_ refuses meta weights, which hold no values; GpuLikeMeta gives the
    # CPU copies that packing reads placeholder values)
    torch.manual_seed(0)
    model = EmbConvNet().to("meta")
    with GpuLikeMeta():
        report = apply_weight_only(model, config)
        out = model(torch.randint(0, 50, (2, 5)).to("meta"))
    assert {c.name for c in report.changed} == {"emb", "conv", "fc1", "fc2"}
    assert _buffers_on(model) == {"meta"} and out.shape == (2, 8)


def test_w8a8_on_another_device_quantizes_into_layers_there():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).to("meta")
    with GpuLikeMeta():
        apply_w8a8(model, W8A8Config(activations="dynamic", smoothing="none"))
        out = model(torch.randn(3, 16, device="meta"))
    assert _buffers_on(model) == {"meta"} and out.shape == (3, 4)


@pytest.mark.parametrize("fmt", ["ternary", "int4"])
def test_qat_trains_and_converts_on_another_device(fmt):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    config = QATConfig(fmt=fmt, group_size=32 if fmt == "int4" else None)
    prepare_qat_(model, config)
    model.to("meta")
    with GpuLikeMeta():
        loss = model(torch.randn(4, 64, device="meta")).square().mean()
        loss.backward()
        assert {p.grad.device.type for p in model.parameters()} == {"meta"}
        convert_qat_(model, config)
        with torch.no_grad():
            out = model(torch.randn(2, 64, device="meta"))
    assert _buffers_on(model) == {"meta"} and out.shape == (2, 8)


def test_layer_sensitivity_of_a_model_on_another_device():
    from nnforge.compress.quantize.mixed import layer_sensitivity

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).to("meta")
    batches = [torch.randn(4, 64, device="meta") for _ in range(2)]

    def loss_fn(m: nn.Module) -> float:
        with torch.no_grad():
            return float(m(batches[0]).square().mean())

    with GpuLikeMeta():
        by_output = layer_sensitivity(model, ["fp32", "int8", "int4"], batches)
        by_loss = layer_sensitivity(model, ["int8"], batches, loss_fn=loss_fn)
    assert set(by_output) == set(by_loss) == {"0", "2"}
    assert [o.fmt for o in by_output["0"]] == ["fp32", "int8", "int4"]
    assert _buffers_on(model) == {"meta"}  # the model is left where it was, unchanged
