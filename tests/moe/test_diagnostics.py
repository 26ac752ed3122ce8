"""Routing diagnostics: the monitor flags collapse and dead experts during training (and not where the load is
even), routing by slice shows which experts serve which data, drift compares two models' routing."""

from __future__ import annotations

import logging

import pytest
import torch

from nnforge.moe import MoE, MoEConfig, build_moe_gpt
from nnforge.moe.diagnostics import RoutingMonitor, routing_by_slice, routing_drift
from nnforge.train import TrainConfig, fit


def _train(model, steps=200, monitor=None):
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 20, (8, 17), generator=gen) for _ in range(steps)]
    fit(model, lambda s: (data[s][:, :-1], data[s][:, 1:]), config=TrainConfig(max_steps=steps, lr=3e-3),
        loss_fn=lambda m, b: m(b[0], b[1])[1], callbacks=[monitor] if monitor else [])


def _gpt(router="top-k", options=None, balance="none", skew=0.0):
    torch.manual_seed(0)
    model = build_moe_gpt(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=20,
                          moe={"num_experts": 4, "hidden": 16, "router": router,
                               "router_options": options if options is not None else {"k": 1}, "balance": balance})
    if skew:
        with torch.no_grad():  # a skewed start: the selection bias favours expert 0 (balance none never moves it)
            for layer in model.moe_layers().values():
                layer.router.bias[0] += skew
    return model


def test_collapse_without_balancing_is_flagged_within_200_steps(caplog):
    model = _gpt(skew=0.05)
    seen = []
    monitor = RoutingMonitor(model, every=10, on_alarm=seen.append)
    with caplog.at_level(logging.WARNING, logger="nnforge.moe"):
        _train(model, monitor=monitor)
    collapse = [a for a in monitor.alarms if a.kind == "collapse"]
    assert collapse and collapse[0].step <= 200 and collapse[0].layer == "transformer.h.0.mlp"
    assert seen == monitor.alarms and "routing collapse in transformer.h.0.mlp" in caplog.text
    assert [a.kind for a in monitor.alarms].count("collapse") == 1  # raised once per layer and kind
    steps = [row["step"] for row in monitor.history]
    assert steps == list(range(10, 201, 10))
    row = monitor.history[-1]
    assert sum(row["load"]) == pytest.approx(1.0) and row["imbalance"] == pytest.approx(max(row["load"]) * 4)


def test_an_even_router_raises_no_alarm():
    model = _gpt(router="expert-choice", options={"capacity_factor": 1.0})
    monitor = RoutingMonitor(model, every=10)
    _train(model, steps=60, monitor=monitor)
    assert monitor.alarms == [] and len(monitor.history) == 6
    assert all(row["imbalance"] == pytest.approx(1.0) for row in monitor.history)


def test_a_dead_expert_needs_patience_and_a_token_resets_it():
    from nnforge.moe import RoutingReport
    from nnforge.moe._report import RoutingCollector

    monitor = RoutingMonitor(torch.nn.Identity(), every=1, dead_patience=3, collapse_share=1.0)

    def sample(step, load):
        c = RoutingCollector({})
        c.reports.append(RoutingReport("m", 10, 3, load, [1 / 3] * 3, 0.0, 0.9, 1.0, 0.1))
        monitor._record(step, c)

    sample(1, [0.5, 0.5, 0.0])
    sample(2, [0.5, 0.5, 0.0])
    sample(3, [0.4, 0.4, 0.2])  # expert 2 got tokens: its count starts again
    sample(4, [0.5, 0.5, 0.0])
    sample(5, [0.5, 0.5, 0.0])
    assert monitor.alarms == []
    sample(6, [0.5, 0.5, 0.0])
    (alarm,) = monitor.alarms
    assert alarm.kind == "dead-expert" and alarm.experts == (2,) and alarm.step == 6


def _specialised_layer():
    torch.manual_seed(0)
    layer = MoE(4, MoEConfig(num_experts=4, hidden=8, router_options={"k": 1})).eval()
    with torch.no_grad():
        layer.router.gate.weight.copy_(torch.eye(4) * 5)  # expert e answers feature e
    return layer


def test_routing_by_slice_shows_which_experts_serve_which_data():
    layer = _specialised_layer()
    verse = [torch.randn(32, 4) * 0.1 + torch.tensor([2.0, 0, 0, 0])]
    prose = [torch.randn(32, 4) * 0.1 + torch.tensor([0, 0, 2.0, 0])]
    result = routing_by_slice(layer, {"verse": verse, "prose": prose})
    assert result.serving("verse", "") == [0] and result.serving("prose", "") == [2]
    assert result.load["verse"][""][0] == 1.0 and result.tokens == {"verse": 32, "prose": 32}
    assert result.to_dict()["serving"]["prose"][""] == [2]


def test_routing_drift_is_zero_for_the_same_model_and_measures_a_change():
    before = _specialised_layer()
    x = [torch.randn(64, 4)]
    (same,) = routing_drift(before, before, x)
    assert same.top1_agreement == 1.0 and same.topk_overlap == 1.0 and same.load_shift == 0.0
    after = _specialised_layer()
    with torch.no_grad():
        after.router.gate.weight[0].zero_()  # expert 0 no longer answers feature 0
        after.router.gate.weight[0, 1] = 5.0
    (drift,) = routing_drift(before, after, x)
    assert drift.top1_agreement < 1.0 and drift.load_shift > 0.0 and drift.load_after[0] < drift.load_before[0]
    ec = MoE(4, MoEConfig(num_experts=4, hidden=8, router="expert-choice"))
    with pytest.raises(ValueError, match="no per-token choices"):
        routing_drift(ec, ec, x)
