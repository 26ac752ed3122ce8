"""quantize_: every weight-only format, W8A8, packed storage round trips, skeleton rebuilds, verdicts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnforge.compress import (
    Int4WeightOnlyConfig,
    Int8WeightOnlyConfig,
    QuantizedConv2d,
    QuantizedEmbedding,
    QuantizedLinear,
    W8A8Config,
    WeightOnlyConfig,
    apply_,
    measure_verdicts,
    quantize_,
)
from nnforge.compress.quantize.kernels import reference_matmul
from nnforge.errors import ConfigError
from nnforge.models.checkpoint import load_weights, save_weights


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 64)
        self.norm = nn.LayerNorm(64)
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 4, bias=False)
        self.conv = nn.Conv1d(4, 4, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.norm(self.emb(ids))))).mean(1)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_int8_replaces_linear_and_embedding_and_lists_the_rest():
    torch.manual_seed(0)
    model = Tiny()
    ids = torch.randint(0, 50, (3, 7))
    ref = model(ids)
    report = quantize_(model, Int8WeightOnlyConfig())
    assert isinstance(model.fc1, QuantizedLinear) and isinstance(model.emb, QuantizedEmbedding)
    assert model.fc1.weight_packed.data.dtype == torch.uint8
    assert {c.name for c in report.changed} == {"emb", "fc1", "fc2"}
    skipped = dict(report.skipped)
    assert "normalisation" in skipped["norm"] and "Conv1d" in skipped["conv"]
    assert report.bytes_after < 0.3 * report.bytes_before
    assert max(c.error for c in report.changed) < 0.01
    with torch.no_grad():
        assert _cos(model(ids), ref) > 0.999


@pytest.mark.parametrize(("fmt", "group", "symmetric", "min_cos", "max_bits"), [
    ("int8", None, True, 0.999, 8.6), ("int4", 32, True, 0.99, 5.0), ("int4", 64, False, 0.99, 5.0),
    ("int3", 32, False, 0.95, 5.0), ("int2", 64, False, 0.8, 2.5), ("ternary", None, True, 0.75, 2.5),
    ("binary", None, True, 0.6, 1.5),
])
def test_every_format_keeps_the_function_and_stores_few_bits(fmt, group, symmetric, min_cos, max_bits):
    torch.manual_seed(0)
    lin = nn.Linear(512, 256)
    x = torch.randn(16, 512)
    ref = lin(x)
    model = nn.Sequential(lin)
    quantize_(model, WeightOnlyConfig(fmt=fmt, group_size=group, symmetric=symmetric, kernel=False))
    q = model[0]
    assert isinstance(q, QuantizedLinear)
    with torch.no_grad():
        assert _cos(q(x), ref) > min_cos
    assert q.weight_packed.bits_per_weight <= max_bits


def test_kernel_path_matches_the_dequantized_path_for_small_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 64))
    quantize_(model, WeightOnlyConfig(fmt="int4", group_size=64))
    x = torch.randn(2, 256)
    q = model[0]
    with torch.no_grad():
        fast = q(x)  # packed integer kernel (int8 activations)
        q.kernel = False
        slow = q(x)  # dequantize + fp32 matmul
    assert _cos(fast, slow) > 0.999


def test_packed_model_round_trips_bit_exactly_through_safetensors_and_a_skeleton(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    cfg = Int4WeightOnlyConfig(group_size=32)
    quantize_(model, cfg)
    save_weights(model, tmp_path / "m.safetensors", {"note": "x"})
    tensors, _ = load_weights(tmp_path / "m.safetensors")
    assert tensors["fc1.weight_packed.data"].dtype == torch.uint8
    fresh = Tiny()
    apply_(fresh, cfg, skeleton=True)
    fresh.load_state_dict(tensors)
    for name, t in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], t), name
    ids = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))


def test_configs_validate_and_presets_dispatch():
    with pytest.raises(ConfigError, match="symmetric only"):
        WeightOnlyConfig(fmt="ternary", symmetric=False)
    with pytest.raises(ConfigError, match="group_size"):
        WeightOnlyConfig(group_size=48)
    model = nn.Sequential(nn.Linear(64, 8))
    report = quantize_(model, Int4WeightOnlyConfig())  # a preset subclass uses the weight-only handler
    assert "int4" in report.changed[0].detail and "hqq" in report.changed[0].detail


def test_data_calibrators_demand_calibration_batches():
    with pytest.raises(ConfigError, match="calibration"):
        quantize_(nn.Sequential(nn.Linear(64, 8)), WeightOnlyConfig(calibrator="gptq"))


def test_gptq_through_quantize_beats_rtn_on_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    mix = torch.randn(128, 128) / 4 + torch.eye(128)
    calib = [torch.randn(64, 128) @ mix for _ in range(8)]
    test = torch.randn(256, 128) @ mix
    ref = model(test)
    errs = {}
    for cal in ("rtn", "gptq"):
        q = copy.deepcopy(model)
        quantize_(q, WeightOnlyConfig(fmt="int3", group_size=32, symmetric=False, calibrator=cal, kernel=False),
                  calibration=calib)
        with torch.no_grad():
            errs[cal] = float((q(test) - ref).norm())
    assert errs["gptq"] < errs["rtn"]


def test_plan_keeps_layers_in_fp32_and_mixes_formats():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 8))
    report = quantize_(model, WeightOnlyConfig(fmt="int4", plan={"0": "int8", "2": "fp32"}))
    assert model[0].fmt == "int8" and model[1].fmt == "int4" and isinstance(model[2], nn.Linear)
    assert ("2", "kept in fp32 by the mixed-precision plan") in report.skipped


def test_w8a8_dynamic_and_static_with_smoothquant():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    outlier = torch.ones(128)
    outlier[:4] = 30.0  # a few activation channels with outliers
    calib = [torch.randn(32, 128) * outlier for _ in range(4)]
    x = torch.randn(64, 128) * outlier
    ref = lin(x)
    errs = {}
    for name, cfg in {"dynamic": W8A8Config(smoothing="none"), "static": W8A8Config(activations="static", smoothing="none"),
                      "static+sq": W8A8Config(activations="static", smoothing="smoothquant")}.items():
        m = nn.Sequential(copy.deepcopy(lin))
        quantize_(m, cfg, calibration=calib)
        assert m[0].act_quant == name.split("+")[0]
        with torch.no_grad():
            errs[name] = float((m(x) - ref).norm() / ref.norm())
    assert errs["dynamic"] < 0.02
    assert errs["static+sq"] < errs["static"]


def test_w8a8_static_needs_calibration():
    with pytest.raises(ConfigError, match="calibration"):
        quantize_(nn.Sequential(nn.Linear(8, 8)), W8A8Config(activations="static"))


def test_conv2d_is_quantized_when_asked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    quantize_(model, WeightOnlyConfig(fmt="int8", group_size=None, modules=("conv",)))
    assert isinstance(model[0], QuantizedConv2d)
    with torch.no_grad():
        assert _cos(model(x), ref) > 0.999


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv2d_keeps_its_padding_mode(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode=mode))
    x = torch.randn(1, 3, 6, 6)
    ref = model(x)
    quantize_(model, WeightOnlyConfig(fmt="int8", group_size=None, modules=("conv",)))
    with torch.no_grad():
        assert _cos(model(x), ref) > 0.999  # 0.46 relative error when the mode was dropped


def test_verdicts_are_measured_per_batch_size():
    model = nn.Sequential(nn.Linear(256, 256))
    quantize_(model, WeightOnlyConfig(fmt="int4", group_size=64))
    out = measure_verdicts(model, batch_sizes=(1, 4), repeats=3)
    v = model[0].verdict
    assert set(v) == {1, 4} and out["0"] == v
    assert all(v[b]["quantized_ms"] > 0 and v[b]["fp32_ms"] > 0 for b in v)
    assert all(v[b]["verdict"] == "not significant" for b in v)  # three samples prove nothing


def test_asymmetric_int4_embeddings_store_zero_points_and_err_less():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.emb.weight.add_(0.5)  # a table that is not centred on 0: a fixed zero point wastes half the grid
    errors = {}
    for sym in (True, False):
        m = copy.deepcopy(model)
        cfg = WeightOnlyConfig(fmt="int4", group_size=32, embedding_fmt="int4", embedding_group_size=32,
                               embedding_symmetric=sym)
        report = quantize_(m, cfg)
        emb = m.emb
        assert isinstance(emb, QuantizedEmbedding)
        assert (emb.packed.zeros is None) == sym
        errors[sym] = next(c.error for c in report.changed if c.name == "emb")
        fresh = copy.deepcopy(model)  # the skeleton built from the config has the same buffers
        apply_(fresh, cfg, skeleton=True)
        fresh.load_state_dict(m.state_dict())
        ids = torch.randint(0, 50, (2, 5))
        with torch.no_grad():
            assert torch.equal(fresh(ids), m(ids))
    assert errors[False] < 0.8 * errors[True]
    with pytest.raises(ConfigError, match="embedding_fmt 'int8' is symmetric only"):
        WeightOnlyConfig(embedding_fmt="int8", embedding_symmetric=False)


def test_gptq_act_order_reaches_the_calibrator():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 32))
    x = torch.randn(256, 128) * torch.linspace(0.1, 3.0, 128)  # unequal input scales: the column order matters
    from nnforge.compress.quantize.calibrate import collect_stats, gptq

    hessian = collect_stats(model, [x])["0"].hessian
    weights = []
    for act_order in (False, True):
        q = copy.deepcopy(model)
        quantize_(q, WeightOnlyConfig(fmt="int4", group_size=32, symmetric=False, calibrator="gptq",
                                      act_order=act_order), calibration=[x])
        direct = gptq(model[0].weight, hessian, "int4", 32, symmetric=False, act_order=act_order)
        assert torch.equal(q[0].packed.dequantize(), direct.dequantize())
        weights.append(direct.dequantize())
    assert not torch.equal(*weights)  # the two orders give different weights, so the check above can fail


class SharedInput(nn.Module):
    """Three projections of one input (like query/key/value) and one of another."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(64, 32), nn.Linear(64, 32), nn.Linear(64, 32)
        self.out = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.q(x) * self.k(x) + self.v(x))


def test_w8a8_smoothquant_gives_layers_that_share_an_input_one_scale():
    torch.manual_seed(0)
    model = SharedInput()
    outlier = torch.ones(64)
    outlier[:3] = 25.0
    calib = [torch.randn(16, 64) * outlier for _ in range(3)]
    from nnforge.compress.quantize.calibrate import collect_stats

    stats = collect_stats(model, calib)
    assert stats["k"].shared_with == "q" and stats["v"].shared_with == "q"
    assert stats["q"].shared_with is None and stats["out"].shared_with is None
    quantize_(model, W8A8Config(smoothing="smoothquant"), calibration=calib)
    assert torch.equal(model.q.input_scale, model.k.input_scale) and torch.equal(model.q.input_scale, model.v.input_scale)
    assert not torch.equal(model.q.input_scale, torch.ones(64))  # the outlier channels did move


def test_w8a8_gptq_weights_beat_rtn_on_layer_output():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    mix = torch.randn(16, 128)  # correlated input channels: where GPTQ's error feedback pays

    def inputs(n: int) -> torch.Tensor:
        return torch.randn(n, 16) @ mix + 0.05 * torch.randn(n, 128)

    calib = [inputs(64) for _ in range(4)]
    x = inputs(256)
    errs = {}
    for cal in ("rtn", "gptq"):
        m = nn.Sequential(copy.deepcopy(lin))
        quantize_(m, W8A8Config(smoothing="none", calibrator=cal), calibration=calib)
        w = m[0].packed.dequantize()
        errs[cal] = float((x @ w.T - x @ lin.weight.detach().T).norm())
    assert errs["gptq"] < 0.8 * errs["rtn"]
    with pytest.raises(ConfigError, match="calibration"):
        quantize_(nn.Sequential(nn.Linear(8, 8)), W8A8Config(smoothing="none", calibrator="gptq"))


def test_w8a8_with_nothing_to_quantize_changes_nothing():
    model = nn.Sequential(nn.Linear(8, 8))
    report = quantize_(model, W8A8Config(calibrator="gptq"), filter=lambda name, mod: False)
    assert not report.changed and isinstance(model[0], nn.Linear)  # no calibration asked for, none needed


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 64)
        self.head = nn.Linear(64, 50, bias=False)
        self.head.weight = self.emb.weight


def test_a_tie_is_quantized_on_both_sides_or_not_at_all():
    both = quantize_(_Tied(), WeightOnlyConfig(fmt="int4", group_size=64))
    assert both.bytes_before == 50 * 64 * 4  # the shared matrix counted once
    assert "tied with emb" in next(c.detail for c in both.changed if c.name == "head")
    one = quantize_(_Tied(), WeightOnlyConfig(fmt="int4", group_size=64, modules=("linear",)))
    assert not one.changed and any(n == "head" and "tied with emb" in why for n, why in one.skipped)
    w8 = _Tied()
    rep = quantize_(w8, W8A8Config())
    assert not rep.changed and isinstance(w8.head, nn.Linear) and w8.head.weight is w8.emb.weight


def test_a_plan_naming_no_module_is_an_error_and_w8a8_reports_quantized_layers():
    with pytest.raises(ConfigError, match="did you mean 'head'"):
        quantize_(_Tied(), WeightOnlyConfig(fmt="int4", plan={"haed": "int8"}))
    model = nn.Sequential(nn.Linear(64, 64))
    quantize_(model, WeightOnlyConfig(fmt="int8"))
    assert ("0", "already quantized") in quantize_(model, W8A8Config()).skipped


def test_quantized_embedding_refuses_ids_out_of_range_like_torch():
    model = nn.Sequential(nn.Embedding(10, 8))
    quantize_(model, Int8WeightOnlyConfig())
    for bad in (-1, 10):
        with pytest.raises(IndexError, match=r"\[0, 10\)"):
            model(torch.tensor([bad]))  # -1 returned row 9 before


def test_a_model_on_the_meta_device_is_refused():
    with torch.device("meta"):
        shell = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    with pytest.raises(ConfigError, match="meta device"):
        quantize_(shell, Int8WeightOnlyConfig())


# W8A8 skeletons read no weight values, so a shapes-only (meta) model's skeleton builds (it never did before)
@pytest.mark.parametrize("config", [Int8WeightOnlyConfig(), W8A8Config(activations="dynamic", smoothing="none"),
                                    W8A8Config()], ids=["int8-weight-only", "w8a8-dynamic", "w8a8-static-smoothquant"])
def test_a_model_on_the_meta_device_can_be_a_skeleton_that_loads(config):
    with torch.device("meta"):
        shell = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    torch.manual_seed(0)
    real = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    quantize_(real, config, calibration=[torch.randn(8, 64)])
    apply_(shell, config, skeleton=True)  # biased layers too (a copy from meta failed before)
    shell.load_state_dict(real.state_dict())
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.equal(shell(x), real(x))


def test_quantized_embedding_returns_the_dtype_of_the_table_it_replaced():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(100, 64), nn.Linear(64, 8)).to(torch.bfloat16)
    ids = torch.randint(0, 100, (2, 5))
    quantize_(m, WeightOnlyConfig(modules=("embedding",)))
    assert m[0].dtype == torch.bfloat16
    assert m(ids).dtype == torch.bfloat16  # float32 rows used to fail in the bf16 Linear (dtype mismatch)
    skeleton = nn.Sequential(nn.Embedding(100, 64), nn.Linear(64, 8)).to(torch.bfloat16)
    apply_(skeleton, WeightOnlyConfig(modules=("embedding",)), skeleton=True)
    skeleton.load_state_dict(m.state_dict())
    torch.testing.assert_close(skeleton(ids), m(ids))
    m.double()  # a module cast moves the output dtype along, as nn.Embedding's weight would
    assert m[0](ids).dtype == torch.float64


@pytest.mark.parametrize("cast", [torch.bfloat16, torch.float64])
def test_module_casts_keep_packed_scales_in_fp16(cast):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(256, 64))
    quantize_(m, WeightOnlyConfig(fmt="int4", group_size=64))
    scales = m[0].weight_packed.scales.clone()
    w = m[0].dequantize()
    m.to(cast)
    assert m[0].weight_packed.scales.dtype == torch.float16  # cast to bf16 they were rounded (and saved so)
    assert torch.equal(m[0].weight_packed.scales, scales) and m[0].bias.dtype == cast
    c = copy.deepcopy(m)  # a copy rebuilt the packed view from the cast buffers: the kernels then failed
    x = torch.randn(100, 256).to(cast)
    # the layer's arithmetic at every batch size: int8 activations per row (docs/kernels.md, "Numerics")
    want = reference_matmul(x.float(), m[0].packed, dtype=torch.float64).double() + m[0].bias.double()
    tol = 5e-2 if cast == torch.bfloat16 else 1e-5
    with torch.no_grad():
        for mod in (m, c):
            assert mod(x[:3]).dtype == cast
            torch.testing.assert_close(mod(x).double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(c[0].dequantize(), w, rtol=0, atol=0)


@pytest.mark.parametrize(("saved", "other", "message"), [
    (WeightOnlyConfig(fmt="int4", group_size=32), WeightOnlyConfig(fmt="int3", group_size=32), "saved weight is int4"),
    (WeightOnlyConfig(fmt="int2", group_size=64, symmetric=True), WeightOnlyConfig(fmt="ternary", group_size=64),
     "saved weight is int2"),
    (Int8WeightOnlyConfig(), W8A8Config(smoothing="none"), "activations none.*this layer is int8.*activations dynamic"),
])
def test_a_saved_model_does_not_load_into_a_skeleton_of_another_format(saved, other, message):
    """Their buffers have the same shapes: the bytes loaded silently and meant something else."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32))
    quantize_(m, saved)
    state = m.state_dict()
    wrong = nn.Sequential(nn.Linear(64, 32))
    apply_(wrong, other, skeleton=True)
    with pytest.raises(RuntimeError, match=message):
        wrong.load_state_dict(state)
    right = nn.Sequential(nn.Linear(64, 32))
    apply_(right, saved, skeleton=True)
    right.load_state_dict(state)
    # a file written before the layout was recorded has no such tensor: it still loads, strictly
    old = {k: v for k, v in state.items() if not k.endswith("weight_packed.layout")}
    assert len(old) == len(state) - 1
    again = nn.Sequential(nn.Linear(64, 32))
    apply_(again, saved, skeleton=True)
    again.load_state_dict(old)
    x = torch.randn(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), m(x))
        torch.testing.assert_close(right(x), m(x))
