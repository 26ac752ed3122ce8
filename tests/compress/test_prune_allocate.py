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


# --- a latency budget from the sparse kernels' own verdicts ---------------------------------------------


def _fake_measure(speedups: dict[float, float]):
    """A stand-in for SparseLinear.measure (no timing in tests): the verdict for a layer of the given sparsity,
    dense at 2.0 ms."""
    def measure(self, repeats: int = 20, alpha: float = 0.05):
        sparsity = round(1.0 - int((self.sparse.dense() != 0).sum()) / (self.in_features * self.out_features), 2)
        s = speedups[sparsity]
        verdict = "faster" if s > 1.1 else "slower" if s < 0.9 else "not significant"
        self.verdicts = {1: {"sparse_ms": 2.0 / s, "dense_ms": 2.0, "speedup": s, "speedup_ci": (s - 0.05, s + 0.05),
                             "p_value": 0.01, "verdict": verdict}}
        return self.verdicts
    return measure


def test_latency_budget_from_sparse_verdicts_counts_dense_time_where_sparse_is_not_faster(monkeypatch) -> None:
    from nnforge.compress.prune.allocate import SparseExecution
    from nnforge.compress.prune.sparse import SparseLinear

    monkeypatch.setattr(SparseLinear, "measure", _fake_measure({0.5: 0.8, 0.75: 1.6}))
    model, data = _model_and_data()
    sens = prune_sensitivity(model, data, criterion="magnitude", levels=[0.0, 0.25, 0.5, 0.75],
                             sparse_execution=SparseExecution(repeats=4))
    for layer in ("0", "1"):
        ms = [o.latency_ms for o in sens[layer]]
        assert ms == [2.0, 2.0, 2.0, 1.25]  # dense below min_sparsity, dense where slower, 2.0 / 1.6 where faster
        how = [o.execution for o in sens[layer]]
        assert how[1].startswith("dense (below min_sparsity") and how[2].startswith("dense (csr 0.80x")
        assert how[3].startswith("sparse (csr 1.60x dense [1.55, 1.65] at batch 1, faster")
    plan = allocate_sparsity(sens, budget=3.3, kind="latency_ms")  # one layer must run sparse: 2.0 + 1.25
    assert plan.latency_ms == pytest.approx(3.25) and plan.ratios == {"0": 0.75, "1": 0.0}  # the cheap layer
    assert [p["execution"].split(" ")[0] for p in plan.per_layer] == ["sparse", "dense"]
    # 50% zeros cost accuracy and buy no time here: never chosen for time, whatever the budget
    assert 0.5 not in allocate_sparsity(sens, budget=4.0, kind="latency_ms").ratios.values()
    with pytest.raises(ConfigError, match="not both"):
        prune_sensitivity(model, data, levels=[0.5], latency_fn=lambda m: 1.0, sparse_execution=SparseExecution())


def test_sparse_execution_times_the_real_kernels() -> None:
    """Unmocked, a few repeats: every level gets a positive time and says how it would run (no timing asserts)."""
    from nnforge.compress.prune.allocate import SparseExecution

    model, data = _model_and_data()
    sens = prune_sensitivity(model, data, criterion="magnitude", levels=[0.0, 0.9],
                             sparse_execution=SparseExecution(repeats=4))
    for options in sens.values():
        assert all(o.latency_ms is not None and o.latency_ms > 0 for o in options)
        assert options[0].execution.startswith("dense (below")
        how, fmt = options[1].execution.split(" (")[0], options[1].execution.split(" (")[1].split(" ")[0]
        assert how in ("sparse", "dense") and fmt in ("2:4", "csr")  # the format sparsify's auto would pick
        assert (options[1].latency_ms < options[0].latency_ms) == (how == "sparse")
