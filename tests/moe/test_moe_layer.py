"""The MoE layer: every router x every dispatch equals the Mixtral-style reference loop, forward and backward;
routing invariants, capacity drops, the balancing losses, auxiliary-loss-free bias updates, the routing reports."""

from __future__ import annotations

import math
import re

import pytest
import torch

from nnforge.errors import ConfigError
from nnforge.moe import ROUTERS, MoE, MoEConfig, collect_routing

ROUTINGS = [
    ("top-k", {"k": 2}),
    ("top-k", {"k": 1, "score": "sigmoid", "normalize": False}),
    ("top-k", {"k": 2, "capacity_factor": 0.5}),  # drops assignments
    ("expert-choice", {"capacity_factor": 2.0}),
]


def _layer(router, options, dispatch, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = MoEConfig(num_experts=4, hidden=12, router=router, router_options=options, dispatch=dispatch, **kw)
    return MoE(8, cfg).double()


def test_every_router_is_covered_here():
    assert {r for r, _ in ROUTINGS} == set(ROUTERS.names())


@pytest.mark.parametrize(("router", "options"), ROUTINGS)
@pytest.mark.parametrize("dispatch", ["fused", "grouped", "padded", "dense"])
def test_dispatch_equals_the_reference_loop_forward_and_backward(router, options, dispatch):
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    results = []
    for d in (dispatch, "reference"):
        layer = _layer(router, options, d)
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
        results.append((y.detach(), xi.grad.clone(), grads))
    (y, gx, g), (y_ref, gx_ref, g_ref) = results
    assert y.shape == x.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)
    assert g.keys() == g_ref.keys() and "router.gate.weight" in g  # the router learns through the combine weights
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_fused_dispatch_without_biases_and_with_an_idle_expert_equals_the_loop(activation):
    """Other activations, no biases, and an expert that gets no token (its weights get no gradient, as in autograd)."""
    from nnforge.moe import Routing, sort_assignments
    from nnforge.moe._experts import Experts

    torch.manual_seed(0)
    experts = Experts(3, 5, 7, activation=activation, bias=False).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    token = torch.arange(6).repeat_interleave(2)
    expert = torch.tensor([0, 2] * 6)  # expert 1 idle
    weight = torch.rand(12, dtype=torch.float64, requires_grad=True)
    out = []
    for how in ("fused", "reference"):
        tok, exp, w, counts = sort_assignments(token, expert, weight, 3)
        r = Routing(tok, exp, w, counts, torch.zeros(6, 3), torch.zeros(6, 3), None)
        xi = x.clone().requires_grad_(True)
        experts.zero_grad(set_to_none=True)
        weight.grad = None
        y = experts.dispatch(xi, r, how)
        (y * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        out.append((y.detach(), xi.grad, weight.grad, [None if p.grad is None else p.grad.clone()
                                                       for p in experts.parameters()]))
    (y, gx, gw, gp), (y_ref, gx_ref, gw_ref, gp_ref) = out
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-12)
    assert [g is None for g in gp] == [g is None for g in gp_ref] == [False, False, True, True, False, False]
    for g, g_ref in zip(gp, gp_ref, strict=True):
        if g is not None:
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_auto_dispatch_falls_back_to_grouped_for_other_dtypes_and_fused_says_why():
    layer = _layer("top-k", {"k": 2}, "auto")
    x = torch.randn(4, 8, dtype=torch.float32)
    assert not layer.experts._fusable(x) and layer.experts._fusable(x.double())
    with pytest.raises(ValueError, match="fused dispatch needs plain nn.Linear"):
        layer.experts.dispatch(x, layer.router.float()(x), "fused")


@pytest.mark.parametrize(("router", "options"), ROUTINGS)
def test_assignments_are_sorted_by_expert_and_counted(router, options):
    layer = _layer(router, options, "grouped")
    r = layer.router(torch.randn(20, 8, dtype=torch.float64))
    assert torch.all(r.expert[1:] >= r.expert[:-1])
    assert torch.equal(r.counts, torch.bincount(r.expert, minlength=4)) and int(r.counts.sum()) == len(r.token)
    if router == "top-k" and options.get("capacity_factor") is None:
        assert len(r.token) == 20 * options["k"] and r.dropped == 0
        assert torch.equal(torch.bincount(r.token, minlength=20), torch.full((20,), options["k"]))
    if router == "top-k" and options.get("normalize", True) and options.get("capacity_factor") is None:
        per_token = torch.zeros(20, dtype=r.weight.dtype).index_add_(0, r.token, r.weight)
        torch.testing.assert_close(per_token, torch.ones(20, dtype=r.weight.dtype))
    if router == "expert-choice":
        assert r.counts.tolist() == [10] * 4 and r.chosen is None  # ceil(2.0 * 20 / 4) tokens each


def test_capacity_keeps_each_experts_highest_weights_and_reports_the_drops():
    layer = _layer("top-k", {"k": 2, "capacity_factor": 0.5}, "grouped")
    x = torch.randn(40, 8, dtype=torch.float64)
    r = layer.router(x)
    cap = math.ceil(0.5 * 40 * 2 / 4)
    assert int(r.counts.max()) <= cap and r.dropped == 80 - len(r.token) > 0
    for e in range(4):  # what an expert kept outweighs what it dropped
        probs = layer.router.gate(x).softmax(-1)
        top = probs.topk(2, -1)
        w = top.values / top.values.sum(-1, keepdim=True)
        wanted = w[top.indices == e]
        kept = r.weight[r.expert == e]
        if len(wanted) > cap:
            assert kept.min() >= wanted.sort(descending=True).values[cap] - 1e-12
    with collect_routing(layer) as routing:
        layer(x)
    assert routing.reports[0].dropped_rate == pytest.approx(r.dropped / 80)


def test_the_auxiliary_loss_is_one_when_uniform_and_near_e_when_collapsed():
    layer = _layer("top-k", {"k": 1}, "grouped")
    x = torch.randn(64, 8, dtype=torch.float64)
    with torch.no_grad():
        layer.router.gate.weight.zero_()
    with collect_routing(layer) as uniform:
        layer(x)
    assert uniform.reports[0].aux_loss == pytest.approx(1.0)
    assert uniform.reports[0].entropy == pytest.approx(1.0)
    with torch.no_grad():
        layer.router.gate.weight[0] = 0.0
        layer.router.gate.weight[0, 0] = 1.0
        x[:, 0] = 50.0  # every token scores expert 0 far above the rest
    with collect_routing(layer) as collapsed:
        layer(x)
    rep = collapsed.reports[0]
    assert rep.aux_loss == pytest.approx(4.0, rel=1e-3) and rep.imbalance == pytest.approx(4.0)
    assert rep.dead == [1, 2, 3] and rep.entropy < 0.01


def test_the_collected_loss_is_the_weighted_balancing_losses_and_has_gradients():
    layer = _layer("top-k", {"k": 2}, "grouped", aux_loss_weight=0.5, z_loss_weight=0.25)
    outer = torch.nn.Sequential(torch.nn.Identity(), layer)
    with collect_routing(outer) as routing:
        outer(torch.randn(10, 8, dtype=torch.float64))
    (rep,) = routing.reports
    assert rep.layer == "1" and rep.tokens == 10 and sum(rep.load) == pytest.approx(1.0)
    assert float(routing.loss.detach()) == pytest.approx(0.5 * rep.aux_loss + 0.25 * rep.z_loss)
    routing.loss.backward()
    assert layer.router.gate.weight.grad.abs().sum() > 0
    free = _layer("top-k", {"k": 2}, "grouped", balance="aux-free", z_loss_weight=0.25)
    with collect_routing(free) as routing:
        free(torch.randn(10, 8, dtype=torch.float64))
    assert float(routing.loss.detach()) == pytest.approx(0.25 * routing.reports[0].z_loss)  # no auxiliary loss
    off = _layer("top-k", {"k": 2}, "grouped", balance="none")
    with collect_routing(off) as routing:
        off(torch.randn(10, 8, dtype=torch.float64))
    assert routing.loss == 0.0 and len(routing.reports) == 1
    off(torch.randn(10, 8, dtype=torch.float64))  # outside a block nobody collects
    assert len(routing.reports) == 1


def test_aux_free_bias_updates_even_out_a_skewed_router():
    layer = _layer("top-k", {"k": 1}, "grouped", balance="aux-free", bias_update_rate=0.005).train()
    with torch.no_grad():
        layer.router.gate.weight[0] += 0.5  # expert 0 favoured
    x = torch.randn(256, 8, dtype=torch.float64)
    x[:, :] += 1.0
    with collect_routing(layer) as before:
        layer.eval()(x)
    layer.train()
    for _ in range(600):  # sign steps of 0.005: the bias settles within a few steps of its balance
        with torch.enable_grad():
            layer(x)
    with collect_routing(layer) as after:
        layer.eval()(x)
    assert before.reports[0].imbalance > 3.9  # collapsed: (nearly) every token on one expert
    assert after.reports[0].imbalance < 1.5 < before.reports[0].imbalance
    assert layer.router.bias[0] < 0 and not layer.router.bias.requires_grad
    frozen = layer.router.bias.clone()
    layer.eval()(x)  # evaluation never moves it
    assert torch.equal(layer.router.bias, frozen)


def test_shared_experts_see_every_token():
    layer = _layer("top-k", {"k": 1}, "grouped", shared_experts=1, shared_hidden=6)
    x = torch.randn(5, 8, dtype=torch.float64)
    routed = layer.experts.dispatch(x, layer.router(x))
    torch.testing.assert_close(layer(x), routed + layer.shared[0](x))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"router": "topk"}, "unknown router 'topk' (did you mean 'top-k'?)"),
    ({"router": "expert-choice", "balance": "aux-free"}, "does not have"),
    ({"router_options": {"k": 0}}, "k"),
    ({"router_options": {"kk": 2}}, "kk"),
])
def test_bad_configs_are_refused_with_the_field_named(kwargs, message):
    with pytest.raises((ConfigError, ValueError), match=re.escape(message)):
        MoEConfig(**kwargs)


def test_k_above_the_number_of_experts_is_refused():
    with pytest.raises(ValueError, match="'k' option of the top-k router must be at most num_experts"):
        MoE(8, MoEConfig(num_experts=2, router_options={"k": 3}))


def test_auto_dispatch_calls_the_expert_modules_when_a_hook_observes_them():
    layer = _layer("top-k", {"k": 2}, "auto")
    x = torch.randn(6, 8, dtype=torch.float64)
    seen = []
    handle = layer.experts.expert(0).c_fc.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        assert not layer.experts._fusable(x)
        layer(x)
    finally:
        handle.remove()
    assert seen and layer.experts._fusable(x)  # the hook saw expert 0's tokens; without it, fused again
