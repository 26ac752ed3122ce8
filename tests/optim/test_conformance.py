"""Every registered optimizer through one table: learns, round-trips its state, handles groups, zeros, None,
declares the shape of every state tensor it keeps.

The table is the registry (``optimizer_names()``): an optimizer registered anywhere is covered with no edit
here; ``OPTIONS`` only tunes a few learning rates to the tiny problem (others run with their defaults)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from nnforge.optim import OPTIMIZERS, build_optimizer, optimizer_names

# Options that suit the tiny problem below; an optimizer missing here runs with its defaults.
OPTIONS: dict[str, dict[str, Any]] = {
    "adamw": {"lr": 1e-2},
    "adafactor": {"lr": 1e-2},
    "adamw-hd": {"lr": 1e-2},
    "batched-muon": {"lr": 0.02, "adamw_lr": 1e-2},
    "lion": {"lr": 2e-3},
    "muon": {"lr": 0.02, "adamw_lr": 1e-2},
    "prodigy": {"d0": 1e-3},
    "schedule-free-adamw": {"lr": 1e-2},
    "sgd": {"lr": 0.05, "momentum": 0.9},  # with momentum, so its state (the momentum buffer) is checked too
    "soap": {"lr": 1e-2, "precondition_frequency": 2},
    "sophia": {"lr": 2e-3},
}
NAMES = optimizer_names()


class TinyMLP(nn.Module):
    """4 → 16 → 16 → 1 regression net, with one layer that never gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(16, 16)  # first in module order, so it is a hidden matrix, not the output layer
        self.fc1, self.fc2, self.out = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))  # (N, 1)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return x, (x[:, :1] * x[:, 1:2] + torch.sin(x[:, 2:3])).detach()


def _model(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP()


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    x, y = _data()
    losses = []
    for _ in range(steps):
        loss = _loss(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _build(name: str, model_or_params: Any) -> torch.optim.Optimizer:
    return build_optimizer(name, model_or_params, **OPTIONS.get(name, {}))


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_decreases_loss(name: str) -> None:
    model = _model()
    losses = _train(model, _build(name, model), 60)
    assert losses[-1] < 0.7 * losses[0], f"{name}: {losses[0]:.4f} → {losses[-1]:.4f}"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_reproduces_steps(name: str) -> None:
    model = _model()
    opt = _build(name, model)
    _train(model, opt, 4)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 3)
    expected = _params(model)

    twin = _model(seed=1)
    twin.load_state_dict(saved_model)
    twin_opt = _build(name, twin)
    twin_opt.load_state_dict(saved_opt)
    _train(twin, twin_opt, 3)
    for a, b in zip(expected, _params(twin), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_with_different_lrs(name: str) -> None:
    model = _model()
    frozen = list(model.fc1.parameters())
    moving = [p for p in model.parameters() if all(p is not q for q in frozen)]
    opt = _build(name, [{"params": frozen, "lr": 0.0}, {"params": moving}])
    before = _params(model)
    _train(model, opt, 5)
    after = _params(model)
    for p, b, a in zip(model.parameters(), before, after, strict=True):
        if any(p is q for q in frozen):
            assert torch.equal(b, a), f"{name}: a parameter with lr=0 moved"
    assert not torch.equal(before[-1], after[-1]), f"{name}: the output layer did not move"


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_give_no_nan(name: str) -> None:
    model = _model()
    opt = _build(name, model)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    _train(model, opt, 2)  # and real gradients afterwards still work
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grad_are_untouched(name: str) -> None:
    model = _model()
    before = _params(model.unused)
    _train(model, _build(name, model), 3)
    for b, a in zip(before, _params(model.unused), strict=True):
        assert torch.equal(b, a)


@pytest.mark.parametrize("name", NAMES)
def test_a_sparse_gradient_is_refused_before_anything_moves(name: str) -> None:
    from nnforge.errors import ConfigError

    model = nn.ModuleDict({"emb": nn.Embedding(10, 16, sparse=True), "fc": nn.Linear(16, 16)})
    opt = _build(name, model)
    out = model["fc"](model["emb"](torch.tensor([1, 2]))).sum()
    out.backward()
    before = _params(model)
    with pytest.raises((ConfigError, RuntimeError)):  # torch's own optimizers raise RuntimeError
        opt.step()
    assert all(torch.equal(b, a) for b, a in zip(before, _params(model), strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_a_parameter_with_no_entries_is_harmless(name: str) -> None:
    if name == "adafactor":
        pytest.skip("torch's Adafactor divides by the parameter's size (ZeroDivisionError): not ours to change")
    empty, w = nn.Parameter(torch.zeros(0, 8)), nn.Parameter(torch.randn(8, 8))
    opt = _build(name, [empty, w])
    (w.sum() + empty.sum()).backward()
    opt.step()
    assert torch.isfinite(w).all() and empty.shape == (0, 8)


class WithConv(nn.Module):
    """1-D, 2-D and 4-D parameters: the shapes an optimizer's state rules must cover."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.conv = nn.Embedding(10, 8), nn.Conv2d(8, 4, 3, padding=1)
        self.fc, self.out = nn.Linear(4, 6), nn.Linear(6, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids).permute(0, 2, 1)[..., None].expand(-1, -1, -1, 3)  # (B, 8, T, 3)
        h = self.conv(x).mean((2, 3))  # (B, 4)
        return self.out(torch.tanh(self.fc(h)))  # (B, 1)


@pytest.mark.parametrize("name", NAMES)
def test_every_state_tensor_is_declared_in_the_registration_and_fits_it(name: str) -> None:
    """A checkpoint's loader checks saved state against the optimizer's own declaration (``state=`` of
    ``register_optimizer``): a tensor kept under an undeclared key would go unchecked, so it fails here."""
    torch.manual_seed(0)
    model = WithConv()
    opt = _build(name, model)
    assert opt.state_shapes == dict(OPTIMIZERS.get(name).state)  # type: ignore[attr-defined]
    ids = torch.randint(0, 10, (4, 5))
    for _ in range(3):
        model(ids).square().mean().backward()
        opt.step()
        opt.zero_grad()
    rules = OPTIMIZERS.get(name).state
    seen = set()
    for param, st in opt.state.items():
        for key, value in st.items():
            if not isinstance(value, torch.Tensor):
                continue
            seen.add(key)
            assert key in rules, f"{name}: state {key!r} is not declared in register_optimizer(state=...)"
            assert tuple(value.shape) in set(rules[key](tuple(param.shape))), (name, key, param.shape, value.shape)
    assert seen, f"{name} kept no tensor state"


def test_one_tensor_instead_of_a_list_is_named() -> None:
    from nnforge.errors import ConfigError

    with pytest.raises(ConfigError, match="not one tensor"):
        build_optimizer("adamw", torch.zeros(3, 3, requires_grad=True))
