"""Pruning sensitivity and the allocator shared with mixed precision: non-uniform ratios that meet the budget
and give less error than uniform pruning on a planted model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnforge.compress import UnstructuredConfig, prune_
from nnforge.compress.prune import sparsity_of
from nnforge.compress.prune.allocate import allocate_sparsity, prune_sensitivity
from nnforge.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only wait on a busy machine


def _model_and_data() -> tuple[nn.Module, list[torch.Tensor]]:
    """Layer 0's weights are mostly tiny (pruning 75% of them costs almost nothing); layer 1's are all alike."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32, bias=False), nn.Linear(32, 32, bias=False))
    with torch.no_grad():
        w = torch.randn(32, 32, generator=g)
        w[w.abs() < 1.2] *= 0.01  # ~77% tiny
        model[0].weight.copy_(w)
        model[1].weight.copy_(torch.randn(32, 32, generator=g))
    return model, [torch.randn(64, 32, generator=g) for _ in range(4)]


def test_sensitivity_grows_with_sparsity_and_leaves_the_model_alone() -> None:
    model, data = _model_and_data()
    before = [p.detach().clone() for p in model.parameters()]
    sens = prune_sensitivity(model, data, criterion="magnitude", levels=[0.0, 0.5, 0.75])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    errors = [o.error for o in sens["1"]]
    assert errors[0] == 0.0 and errors == sorted(errors) and errors[-1] > 0.05
    assert sens["0"][-1].error < 0.01 * sens["1"][-1].error  # the planted redundant layer prunes cheaply
    assert sens["1"][1].kept == 512 and sens["1"][1].flops == 512 * 64  # 64 rows per calibration batch


def test_allocation_meets_the_budget_and_beats_uniform() -> None:
    model, data = _model_and_data()
    sens = prune_sensitivity(model, data, criterion="magnitude", levels=[0.0, 0.25, 0.5, 0.75])
    plan = allocate_sparsity(sens, budget=0.5)
    assert plan.ratios == {"0": 0.75, "1": 0.25} and plan.sparsity >= 0.5
    uniform = sum(o.error for opts in sens.values() for o in opts if o.sparsity == 0.5)
    assert plan.total_error < 0.5 * uniform
    prune_(model, UnstructuredConfig(plan=plan.ratios))
    assert sparsity_of(model) == {"0": 0.75, "1": 0.25}
    flops = allocate_sparsity(sens, budget=0.5, kind="flops")
    assert flops.flops <= 0.5 * 2 * 1024 * 64


def test_allocation_names_what_cannot_be_met() -> None:
    model, data = _model_and_data()
    sens = prune_sensitivity(model, data, criterion="magnitude", levels=[0.0, 0.5])
    with pytest.raises(ConfigError, match="reach at best 0.5"):
        allocate_sparsity(sens, budget=0.9)
    with pytest.raises(ConfigError, match="latency_fn"):
        allocate_sparsity(sens, budget=1.0, kind="latency_ms")
    with pytest.raises(ConfigError, match="budget"):
        allocate_sparsity(sens, budget=1.5)


def test_latency_budget_uses_the_callers_measurement() -> None:
    model, data = _model_and_data()
    fake_ms = lambda layer: 1.0 + float((layer.weight != 0).float().mean())  # noqa: E731  a stand-in timer
    sens = prune_sensitivity(model, data, criterion="magnitude", levels=[0.0, 0.5, 0.75], latency_fn=fake_ms)
    plan = allocate_sparsity(sens, budget=3.2, kind="latency_ms")
    assert plan.latency_ms is not None and plan.latency_ms <= 3.2 and plan.ratios["0"] == 0.75
