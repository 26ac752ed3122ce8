"""Every optimizer off the CPU: stepping a model on another device, also after loading a CPU-saved state.

No GPU here: the ``meta`` device stands in for one, under :class:`GpuLikeMeta` (tests/_devices.py), which
answers ``.item()`` and refuses what CUDA refuses that plain meta lets through (writing device results into a
CPU tensor).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _devices import GpuLikeMeta
from nnforge.optim import build_optimizer, optimizer_names


def _mlp(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(device)


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    device = next(model.parameters()).device
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(5, 8, device=device)).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name", optimizer_names())
def test_optimizer_steps_a_model_on_another_device(name: str) -> None:
    model = _mlp("meta")
    with GpuLikeMeta():
        opt = build_optimizer(name, model)
        _steps(model, opt, 3)
    for st in opt.state.values():
        for key, value in st.items():
            if isinstance(value, torch.Tensor) and key != "step":
                assert value.device.type == "meta", (name, key)


def _resumed_on_meta(name: str) -> torch.optim.Optimizer:
    """An optimizer stepped twice on the CPU, its state loaded into one for a model on meta, stepped once."""
    model = _mlp()
    opt = build_optimizer(name, model)
    _steps(model, opt, 2)
    moved = _mlp("meta")
    with GpuLikeMeta():
        resumed = build_optimizer(name, moved)
        resumed.load_state_dict(opt.state_dict())
        _steps(moved, resumed, 1)
    return resumed


@pytest.mark.parametrize("name", optimizer_names())
def test_optimizer_resumes_a_cpu_saved_state_on_another_device(name: str) -> None:
    _resumed_on_meta(name)


@pytest.mark.parametrize("name", ["batched-muon", "normuon"])
def test_batched_muon_resumed_on_another_device_keeps_its_step_counts_there(name: str) -> None:
    """The fused AdamW kernel of the non-matrix part reads its step counts on the parameters' device; torch's
    load_state_dict leaves ``step`` where it was saved (the CPU) unless a group says fused/capturable."""
    resumed = _resumed_on_meta(name)
    steps = [st["step"] for st in resumed.state.values() if "step" in st]
    assert steps and all(s.device.type == "meta" for s in steps)
