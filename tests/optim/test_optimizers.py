"""Behaviours specific to single optimizers: grouping, Schedule-Free modes, Prodigy's d, errors, hybrids."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from nnforge.errors import ConfigError
from nnforge.models import build
from nnforge.optim import OPTIMIZERS, Prodigy, ScheduleFreeAdamW, Sophia, build_optimizer, param_groups_for
from nnforge.optim.batched_muon import orthogonalize


def _quadratic_steps(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int) -> None:
    for _ in range(steps):
        loss = sum(((p - 1.0) ** 2).sum() for p in params)
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_every_optimizer_cites_its_paper() -> None:
    for name, spec in OPTIMIZERS.items():
        assert "(20" in spec.paper, name
        assert spec.config.model_fields["lr"].default > 0, name


def test_param_groups_for_char_gpt_splits_matrices_from_the_rest() -> None:
    model = build("char-gpt")
    groups = param_groups_for(model, "muon")
    hidden, rest = groups[0]["params"], groups[1]["params"]
    assert groups[0]["use_muon"] and not groups[1]["use_muon"]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 and ".h." in names[id(p)] for p in hidden)
    assert len(hidden) == 4 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per layer
    assert any(p is model.lm_head.weight for p in rest)  # tied with wte: one parameter, in the rest
    assert any(p is model.transformer["wpe"].weight for p in rest)
    assert len(hidden) + len(rest) == len(list(model.parameters()))


def test_param_groups_for_untied_head_and_bad_kind() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    hidden, rest = (g["params"] for g in param_groups_for(model))
    assert [p is model[1].weight for p in hidden] == [True]
    assert any(p is model[3].weight for p in rest)
    with pytest.raises(ConfigError, match="unknown kind"):
        param_groups_for(model, "shampoo")


def test_schedule_free_train_eval_swap_is_reversible() -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(3))]
    opt = build_optimizer("schedule-free-adamw", params, lr=0.05)
    assert isinstance(opt, ScheduleFreeAdamW) and opt.requires_train_eval_modes
    _quadratic_steps(opt, params, 10)
    y = [p.detach().clone() for p in params]
    opt.eval()
    x = [p.detach().clone() for p in params]
    assert not torch.allclose(x[0], y[0])
    opt.eval()  # idempotent
    assert torch.equal(params[0], x[0])
    opt.train()
    for p, before in zip(params, y, strict=True):
        torch.testing.assert_close(p.detach(), before, rtol=1e-5, atol=1e-6)
    opt.eval()
    with pytest.raises(Exception, match="eval mode"):
        opt.step()


def test_prodigy_d_grows_from_d0() -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(8, 8)), nn.Parameter(torch.randn(8))]
    opt = build_optimizer("prodigy", params, d0=1e-6)
    assert isinstance(opt, Prodigy)
    _quadratic_steps(opt, params, 30)
    d = opt.param_groups[0]["d"]
    assert d > 1e-3, d
    assert all(g["d"] == d for g in opt.param_groups)


def test_hypergradient_learns_its_lr_scale() -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(16))]
    opt = build_optimizer("adamw-hd", params, lr=1e-3, weight_decay=0.0, hypergrad_lr=0.05)
    _quadratic_steps(opt, params, 40)
    assert opt.param_groups[0]["lr_scale"] > 1.5  # far from the minimum: the lr should grow


def test_sophia_uses_its_hessian_estimate() -> None:
    """update_hessian folds g⊙g into an EMA, and step divides the momentum by it (clipped at 1): where the
    estimate is large the step is smaller than the signed-momentum step ``lr·sign(m)`` it takes without one."""
    lr, rho, bs = 0.1, 0.04, 100
    p = nn.Parameter(torch.zeros(6, 6))
    opt = build_optimizer("sophia", [p], lr=lr, rho=rho, weight_decay=0.0, batch_tokens=bs, hessian_update_interval=2)
    assert isinstance(opt, Sophia) and opt.hessian_update_interval == 2
    beta1, beta2 = opt.param_groups[0]["betas"]
    g1, g2 = torch.linspace(-10.0, 10.0, 36).view(6, 6), torch.linspace(3.0, -3.0, 36).view(6, 6)
    p.grad = g1.clone()
    opt.update_hessian()
    p.grad = g2.clone()
    opt.update_hessian()
    h = beta2 * (1 - beta2) * g1 * g1 + (1 - beta2) * g2 * g2  # the EMA of both estimates, from zero
    torch.testing.assert_close(opt.state[p]["hessian"], h)

    p.grad = g1.clone()
    opt.step()
    m = (1 - beta1) * g1
    expected = -lr * m.sign() * (m.abs() / (rho * bs * h + 1e-15)).clamp(max=1.0)
    torch.testing.assert_close(p.detach(), expected)
    # the estimate shrank most steps well below the signed-momentum step (which ignores it)
    shrunk = (p.detach().abs() < 0.5 * lr).float().mean()
    assert shrunk > 0.5, f"only {shrunk:.0%} of the steps were shrunk by the Hessian estimate"


@pytest.mark.parametrize(("options", "named"), [
    ({"lrr": 0.1}, "'lrr'"),
    ({"lr": -1.0}, "lr"),
    ({"betas": (0.9, 1.0)}, "betas"),
    ({"precondition_frequency": 0}, "precondition_frequency"),
])
def test_bad_option_raises_config_error_naming_it(options: dict[str, object], named: str) -> None:
    params = [nn.Parameter(torch.zeros(3, 3))]
    with pytest.raises(ConfigError, match=named) as info:
        build_optimizer("soap", params, **options)
    assert "Allowed options" in str(info.value) and "max_precond_dim" in str(info.value)


def test_unknown_optimizer_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'soap'"):
        build_optimizer("soapp", [nn.Parameter(torch.zeros(2))])


@pytest.mark.parametrize("name", ["muon", "batched-muon"])
def test_hybrid_follows_an_lr_scheduler(name: str) -> None:
    model = build("char-gpt", n_layer=1, n_embd=32, n_head=2, block_size=8, vocab_size=11)
    opt = build_optimizer(name, model, lr=0.02, adamw_lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert sorted(g["lr"] for g in opt.param_groups) == [5e-4, 0.01]
    idx = torch.randint(0, 11, (2, 8))
    model(idx, idx)[1].backward()
    opt.step()
    sched.step()
    if hasattr(opt, "optimizers"):
        assert sorted(g["lr"] for o in opt.optimizers for g in o.param_groups) == [5e-4, 0.01]


def _beside_torch_muon(name: str, shapes: list[tuple[int, int]], **options: Any) -> list[tuple[Tensor, Tensor]]:
    """``(ours, torch's)`` parameter pairs after 3 steps of nnforge's ``name`` and torch.optim.Muon on the same
    start and the same synthetic gradients."""
    torch.manual_seed(0)
    ours = [nn.Parameter(torch.randn(*s)) for s in shapes]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    opt = build_optimizer(name, [{"params": ours, "use_muon": True}], lr=0.02, weight_decay=0.1, **options)
    ref = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.sin(a.detach() * 3)
            b.grad = torch.sin(b.detach() * 3)
        opt.step()
        ref.step()
    return [(a.detach(), b.detach()) for a, b in zip(ours, theirs, strict=True)]


def test_batched_muon_matches_torch_muon() -> None:
    for a, b in _beside_torch_muon("batched-muon", [(24, 8), (8, 24), (8, 24), (16, 16)], split_fused=1):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)


def test_muon_is_torch_muon_on_matrices() -> None:
    """'muon' hands torch's Muon update 2-D views (FlatMuon): on 2-D parameters it is torch.optim.Muon exactly, so
    the optimizer benchmark's 'torch Muon' row measures torch's update."""
    for a, b in _beside_torch_muon("muon", [(24, 8), (8, 24), (16, 16)]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_orthogonalize_flattens_the_spectrum() -> None:
    torch.manual_seed(0)
    stack = torch.randn(3, 16, 48) * torch.logspace(-2, 1, 48)
    s = torch.linalg.svdvals(orthogonalize(stack).float())
    assert float(s.min()) > 0.3 and float(s.max()) < 1.6


def test_polar_express_flattens_the_spectrum_more_than_muons_quintic() -> None:
    torch.manual_seed(0)
    stack = torch.randn(3, 16, 48) * torch.logspace(-2, 1, 48)
    spread = {}
    for name in ("jordan", "polar-express"):
        s = torch.linalg.svdvals(orthogonalize(stack, dtype=torch.float32, coefficients=name))
        spread[name] = float((s - 1).abs().max())
    assert spread["polar-express"] < 0.5 * spread["jordan"]
    assert spread["polar-express"] < 0.2


@pytest.mark.parametrize("options", [{"rest": "soap"}, {"row_norm": True}, {"cautious": True},
                                     {"split_fused": 1, "nesterov": False}, {"ns_coefficients": "polar-express"}])
def test_batched_muon_variants_learn_and_round_trip(options: dict[str, object]) -> None:
    import copy

    def run(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> float:
        idx = torch.arange(16).remainder(7)[None, :]
        for _ in range(steps):
            loss = model(idx[:, :-1], idx[:, 1:])[1]
            loss.backward()
            opt.step()
            opt.zero_grad()
        return loss.item()

    torch.manual_seed(0)
    model = build("char-gpt", n_layer=1, n_embd=16, n_head=2, block_size=16, vocab_size=7)
    opt = build_optimizer("batched-muon", model, lr=0.02, adamw_lr=1e-2, **options)
    first = run(model, opt, 1)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
    last = run(model, opt, 25)
    assert last < 0.7 * first
    twin = build("char-gpt", n_layer=1, n_embd=16, n_head=2, block_size=16, vocab_size=7)
    twin.load_state_dict(saved[0])
    twin_opt = build_optimizer("batched-muon", twin, lr=0.02, adamw_lr=1e-2, **options)
    twin_opt.load_state_dict(saved[1])
    assert run(twin, twin_opt, 25) == last


def test_normuon_steps_every_hidden_matrix_by_adamws_rms() -> None:
    torch.manual_seed(0)
    shapes = [(24, 8), (8, 24), (16, 16)]
    params = [nn.Parameter(torch.randn(*s)) for s in shapes]
    before = [p.detach().clone() for p in params]
    opt = build_optimizer("normuon", params, lr=0.01, weight_decay=0.0)
    assert all(g["row_norm"] for g in opt.param_groups)
    for p in params:
        p.grad = torch.randn_like(p) * torch.logspace(-2, 1, p.shape[0])[:, None]  # very uneven rows
    opt.step()
    for p, b in zip(params, before, strict=True):
        delta = (p.detach() - b).reshape(p.shape[0], -1)
        torch.testing.assert_close(delta.square().mean().sqrt(), torch.tensor(0.2 * 0.01), rtol=1e-3, atol=0)
        row_rms = delta.square().mean(dim=1).sqrt()
        assert float(row_rms.max() / row_rms.min()) < 1.01  # NorMuon: every neuron moves by the same RMS


def test_position_embedding_size_does_not_pull_hidden_matrices_out() -> None:
    # n_embd == block_size: c_proj's out_features equals wpe's num_embeddings, which is no vocabulary
    model = build("char-gpt", block_size=128)
    hidden, rest = (g["params"] for g in param_groups_for(model))
    assert len(hidden) == 4 * 4 and len(rest) == 11
    untied = nn.ModuleDict({"wte": nn.Embedding(10, 8), "wpe": nn.Embedding(8, 8),
                            "head": nn.Linear(8, 10), "fc": nn.Linear(8, 8), "out": nn.Linear(8, 3)})
    hidden, rest = (g["params"] for g in param_groups_for(untied))
    assert [p is untied["fc"].weight for p in hidden] == [True]  # out_features == wpe's size only
    assert any(p is untied["head"].weight for p in rest)  # out_features == wte's vocabulary: the LM head


def test_sophia_applies_batch_tokens_once() -> None:
    # reference SophiaG: h is an EMA of g⊙g; the step divides by ρ·bs·h
    bs, rho, lr, (b1, b2) = 768, 0.04, 1e-3, (0.965, 0.99)
    gen = torch.Generator().manual_seed(0)
    p = nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64))
    start = p.detach().clone()
    opt = build_optimizer("sophia", [p], lr=lr, rho=rho, batch_tokens=bs, weight_decay=0.0, betas=(b1, b2))
    gh, g = torch.randn(5, generator=gen, dtype=torch.float64), 0.01 * torch.randn(5, generator=gen, dtype=torch.float64)
    p.grad = gh.clone()
    opt.update_hessian()
    torch.testing.assert_close(opt.state[p]["hessian"], (1 - b2) * gh * gh)
    p.grad = g.clone()
    opt.step()
    m = (1 - b1) * g
    expected = start - lr * m.sign() * (m.abs() / (rho * bs * (1 - b2) * gh * gh + 1e-15)).clamp(max=1)
    torch.testing.assert_close(p.detach(), expected)


def test_soap_first_step_only_initialises_its_basis() -> None:
    # a basis computed from the gradient it rotates: Adam would blow rounding noise up into the step
    torch.manual_seed(0)
    p, b = nn.Parameter(torch.randn(12, 8)), nn.Parameter(torch.randn(8))
    start = [p.detach().clone(), b.detach().clone()]
    opt = build_optimizer("soap", [p, b], lr=1e-2)
    p.grad, b.grad = torch.randn(12, 8), torch.randn(8)
    opt.step()
    assert torch.equal(p.detach(), start[0]) and torch.equal(b.detach(), start[1])
    assert "QL" in opt.state[p] and opt.state[p]["step"] == 0
    p.grad, b.grad = torch.randn(12, 8), torch.randn(8)
    opt.step()
    assert opt.state[p]["step"] == 1 and not torch.equal(p.detach(), start[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_soap_trains_half_precision_parameters(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(6, 4, dtype=dtype))
    opt = build_optimizer("soap", [p], lr=1e-2, precondition_frequency=2)
    for _ in range(5):  # eigh at the first step, QR refreshes at steps 2 and 4
        p.grad = torch.randn(6, 4, dtype=dtype)
        opt.step()
    assert p.dtype == dtype and opt.state[p]["QL"].dtype == dtype and torch.isfinite(p.float()).all()


def _reference_prodigy(x: torch.Tensor, grad, steps: int, lr: float = 1.0, betas=(0.9, 0.999), eps: float = 1e-8,
                       d0: float = 1e-6) -> list[torch.Tensor]:
    """konstmish/prodigy's Prodigy.step (one group, no bias correction, no wd, no growth limit)."""
    import math

    beta1, beta2 = betas
    beta3 = math.sqrt(beta2)
    d, d_max, d_num = d0, d0, 0.0
    s, x0, m, v = torch.zeros_like(x), x.clone(), torch.zeros_like(x), torch.zeros_like(x)
    out = []
    for _ in range(steps):
        g = grad(x)
        dlr = d * lr
        d_num = d_num * beta3 + (d / d0) * dlr * torch.dot(g, x0 - x).item()
        m = m * beta1 + g * d * (1 - beta1)
        v = v * beta2 + g * g * d * d * (1 - beta2)
        s = s * beta3 + g * (d / d0) * dlr
        d_hat = d_num / s.abs().sum().item()
        if d == d0:
            d = max(d, d_hat)
        d_max = max(d_max, d_hat)
        d = d_max
        x = x - dlr * m / (v.sqrt() + d * eps)  # the step moves by the old dlr
        out.append(x.clone())
    return out


def test_prodigy_matches_the_reference_including_the_step_where_d_grows() -> None:
    target = torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)
    grad = lambda x: 2 * (x - target)  # noqa: E731
    ref = _reference_prodigy(torch.zeros(3, dtype=torch.float64), grad, 6)
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = build_optimizer("prodigy", [p])
    for expected in ref:
        p.grad = grad(p.detach())
        opt.step()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["batched-muon", "normuon", "schedule-free-adamw", "soap", "lion", "sophia",
                                  "prodigy", "adamw-hd"])
def test_nnforge_optimizers_refuse_complex_parameters_naming_them(name: str) -> None:
    # they silently dropped the imaginary part, used g·g for |g|², or crashed inside torch
    model = nn.Module()
    model.real = nn.Parameter(torch.randn(4, 6))
    model.spectrum = nn.Parameter(torch.randn(4, 6, dtype=torch.complex64))
    with pytest.raises(ConfigError, match="'spectrum'.*does not support complex parameters"):
        build_optimizer(name, model)
    with pytest.raises(ConfigError, match="parameter 1 of param group 0 .*complex64"):
        build_optimizer(name, [model.real, model.spectrum])
    opt = build_optimizer(name, [model.real])
    with pytest.raises(ConfigError, match="complex"):
        opt.add_param_group({"params": [model.spectrum]})
    assert len(opt.param_groups) == 1


def test_torch_adamw_still_takes_complex_parameters() -> None:
    p = nn.Parameter(torch.randn(3, dtype=torch.complex64))
    opt = build_optimizer("adamw", [p])
    p.grad = torch.randn(3, dtype=torch.complex64)
    opt.step()


def test_muon_flattens_conv_kernels_like_batched_muon() -> None:
    # conv kernels are hidden matrices: "muon" gave them AdamW at adamw_lr, "batched-muon" the Muon rule
    torch.manual_seed(0)
    start = torch.randn(6, 4, 3, 3)
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    muon = build_optimizer("muon", [{"params": [ours], "use_muon": True}], lr=0.02, weight_decay=0.1)
    assert [type(o).__name__ for o in muon.optimizers] == ["FlatMuon"]
    batched = build_optimizer("batched-muon", [{"params": [theirs], "use_muon": True}], lr=0.02, weight_decay=0.1,
                              split_fused=1, ns_dtype="bfloat16")
    for _ in range(3):
        ours.grad = torch.sin(ours.detach() * 3)
        theirs.grad = torch.sin(theirs.detach() * 3)
        muon.step()
        batched.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=0, atol=2e-3)
    assert muon.state_dict()["parts"][0]["state"][0]["momentum_buffer"].shape == (6, 36)


def test_schedule_free_refuses_beta1_zero() -> None:
    # eval() divides by β1: it raised ZeroDivisionError (and a skipped swap left z in place of x)
    p = nn.Parameter(torch.zeros(3))
    with pytest.raises(ConfigError, match=r"betas\[0\] must be > 0"):
        build_optimizer("schedule-free-adamw", [p], betas=(0.0, 0.999))
    with pytest.raises(ConfigError, match=r"betas\[0\] must be > 0"):
        ScheduleFreeAdamW([p], betas=(0.0, 0.999))
