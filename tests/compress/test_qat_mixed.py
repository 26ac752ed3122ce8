"""QAT (fake quant + STE, as a training callback) and mixed-precision allocation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnforge.compress import QuantizedLinear, WeightOnlyConfig, quantize_
from nnforge.compress.quantize.kernels import quantize_weight
from nnforge.compress.quantize.mixed import LayerOption, allocate_bits, layer_sensitivity
from nnforge.compress.quantize.qat import QATConfig, convert_qat_, fake_quantize, prepare_qat_, qat_callback
from nnforge.errors import ConfigError


@pytest.mark.parametrize(("fmt", "group", "sym"), [("int8", None, True), ("int4", 32, False), ("int3", 32, True),
                                                   ("int2", 64, False), ("ternary", None, True), ("binary", 64, True)])
def test_fake_quant_equals_packed_dequantization_and_passes_gradients(fmt, group, sym):
    torch.manual_seed(0)
    w = torch.randn(32, 128, requires_grad=True)
    fq = fake_quantize(w, fmt, group, sym)
    assert torch.equal(fq.detach(), quantize_weight(w.detach(), fmt, group, symmetric=sym).dequantize())
    fq.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through


def test_qat_callback_trains_ternary_and_converts_exactly():
    from nnforge.train import TrainConfig, fit

    torch.manual_seed(0)
    x = torch.randn(256, 16)
    y = (x[:, :4].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # built before QAT: the callback keeps its parameters
    cfg = QATConfig(fmt="ternary")
    cb = qat_callback(cfg)
    result = fit(model, lambda i: (x[(i % 4) * 64:(i % 4 + 1) * 64], y[(i % 4) * 64:(i % 4 + 1) * 64]),
                 config=TrainConfig(max_steps=80, lr=1e-2, log_every=1000), optimizer=opt, callbacks=[cb])
    assert cb.report is not None and len(cb.report.changed) == 2
    assert sum(result.losses[-8:]) < 0.7 * sum(result.losses[:8])
    with torch.no_grad():
        fake = model(x)
    convert_qat_(model, cfg)
    assert isinstance(model[0], QuantizedLinear) and model[0].fmt == "ternary" and model[0].act_quant == "dynamic"
    with torch.no_grad():
        packed = model(x)
    assert torch.allclose(fake, packed, atol=1e-5)


def test_prepare_qat_skips_tied_and_named_modules():
    emb = nn.Embedding(10, 16)
    head = nn.Linear(16, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "body": nn.Linear(16, 16), "head": head})
    report = prepare_qat_(model, QATConfig(fmt="int4", group_size=None, skip=("body",)))
    assert [c.name for c in report.changed] == []
    assert any("tied" in why for _, why in report.skipped)
    assert not head._forward_pre_hooks  # a skipped layer trains in full precision, activations included


def _opt(fmt, error, nbytes, params=1000, latency=None):
    return LayerOption(fmt, error, nbytes, params, latency)


def test_allocator_meets_the_budget_and_spends_bits_where_error_is():
    sens = {
        "sensitive": [_opt("int8", 0.001, 1000), _opt("int4", 0.2, 500), _opt("int2", 0.9, 250)],
        "robust": [_opt("int8", 0.0001, 1000), _opt("int4", 0.001, 500), _opt("int2", 0.01, 250)],
    }
    plan = allocate_bits(sens, budget=5.0, kind="avg_bits")
    assert plan.avg_bits <= 5.0
    assert plan.formats == {"sensitive": "int8", "robust": "int2"}
    with pytest.raises(ConfigError, match="cheapest"):
        allocate_bits(sens, budget=1.0)
    with pytest.raises(ConfigError, match="latencies"):
        allocate_bits(sens, budget=1.0, kind="latency_ms")


def test_allocator_never_picks_a_slower_less_precise_option_under_a_latency_budget():
    sens = {"a": [_opt("fp32", 0.0, 4000, latency=1.0), _opt("int2", 0.5, 250, latency=2.0),
                  _opt("int8", 0.01, 1000, latency=0.5)]}
    plan = allocate_bits(sens, budget=0.8, kind="latency_ms")
    assert plan.formats == {"a": "int8"}


def test_sensitivity_then_plan_then_quantize():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))  # K = 256: no block padding
    calib = [torch.randn(32, 256) for _ in range(4)]
    sens = layer_sensitivity(model, ["int8", "int4", "int2"], calib, group_size=None)
    assert set(sens) == {"0", "2"}
    e = {n: {o.fmt: o.error for o in opts} for n, opts in sens.items()}
    assert e["0"]["int2"] > e["0"]["int4"] > e["0"]["int8"]
    plan = allocate_bits(sens, budget=5.0)
    report = quantize_(model, WeightOnlyConfig(fmt="int4", group_size=None, plan=plan.formats))
    assert {c.name: c.detail.split()[0] for c in report.changed} == plan.formats


def test_end_to_end_sensitivity_and_measured_latency():
    """loss_fn: the loss increase with only that layer quantized; measure_latency: timed per format."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 16))
    calib = [torch.randn(32, 128) for _ in range(2)]
    with torch.no_grad():
        ref = model(calib[0])

    def mse(m):
        with torch.no_grad():
            return float((m(calib[0]) - ref).square().mean())

    before = [p.detach().clone() for p in model.parameters()]
    sens = layer_sensitivity(model, ["fp32", "int8", "int2"], calib, group_size=None, loss_fn=mse,
                             measure_latency=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # model left as it was
    for opts in sens.values():
        err = {o.fmt: o.error for o in opts}
        assert err["fp32"] == 0.0 and 0.0 <= err["int8"] < err["int2"]
        assert all(o.latency_ms is not None and o.latency_ms > 0 for o in opts)
    plan = allocate_bits(sens, budget=sum(o.latency_ms for opts in sens.values() for o in opts if o.fmt == "fp32") * 10,
                         kind="latency_ms")
    assert set(plan.formats) == {"0", "2"}


@pytest.mark.parametrize(("sensitivity", "budget", "message"), [
    ({}, 4, "holds no layer"), ({"a": []}, 4, "no measured option"), ({"a": [_opt("int8", 0.1, 100)]}, float("nan"),
                                                                       "positive finite"),
])
def test_allocator_names_bad_input(sensitivity, budget, message):
    with pytest.raises(ConfigError, match=message):
        allocate_bits(sensitivity, budget)
