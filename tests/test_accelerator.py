"""The same work on an accelerator as on the CPU: run where a GPU is, skipped where none is.

The ``meta``-device tests (``test_*_devices.py``) check that nothing mixes devices; these check the numbers
on real hardware. The device is ``$NNFORGE_TEST_DEVICE`` if set (``cpu`` checks the tests themselves), else
``cuda`` when there is one; without either every test here is skipped, saying why.

    NNFORGE_TEST_DEVICE=cuda .venv/bin/python -m pytest -q tests/test_accelerator.py
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from _tiny import EmbConvNet
from nnforge.compress import Int4WeightOnlyConfig, Int8WeightOnlyConfig, W8A8Config, quantize_
from nnforge.compress.quantize.qat import QATConfig, convert_qat_, prepare_qat_
from nnforge.evaluate.calibration import expected_calibration_error, fit_temperature
from nnforge.optim import build_optimizer, optimizer_names

_ENV = os.environ.get("NNFORGE_TEST_DEVICE")
DEVICE = _ENV or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no accelerator (set NNFORGE_TEST_DEVICE to choose one)")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return EmbConvNet()


def _ids(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 100, (n, 7), generator=torch.Generator().manual_seed(1))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> None:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    assert (a - b).norm() <= rtol * b.norm() + 1e-6, f"relative difference {(a - b).norm() / b.norm():.2e}"


CONFIGS = [Int8WeightOnlyConfig(modules=("linear", "embedding", "conv"), kernel=False),
           Int4WeightOnlyConfig(group_size=32, modules=("linear", "embedding", "conv"), kernel=False)]


@pytest.mark.parametrize("config", CONFIGS, ids=["int8", "int4"])
def test_a_quantized_model_computes_the_same_on_the_device(config):
    cpu = _net()
    quantize_(cpu, config)
    moved = copy.deepcopy(cpu).to(DEVICE)
    with torch.no_grad():
        _close(moved(_ids().to(DEVICE)), cpu(_ids()))


@pytest.mark.parametrize("config", [*CONFIGS, W8A8Config(activations="dynamic", smoothing="none")],
                         ids=["int8", "int4", "w8a8"])
def test_quantizing_on_the_device_packs_the_same_bits_as_on_the_cpu(config):
    model = (nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)) if isinstance(config, W8A8Config)
             else _net())
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p, std=0.1)
    on_device = copy.deepcopy(model).to(DEVICE)
    quantize_(model, config)
    quantize_(on_device, config)
    cpu_state, dev_state = model.state_dict(), on_device.state_dict()
    assert cpu_state.keys() == dev_state.keys()
    for k, v in dev_state.items():
        assert v.device.type == torch.device(DEVICE).type, k
        assert torch.equal(v.cpu(), cpu_state[k]), k


def test_qat_trains_and_converts_on_the_device_as_on_the_cpu():
    config = QATConfig(fmt="int4", group_size=32)
    cpu, moved = (_mlp(), _mlp().to(DEVICE))  # a parametrized module cannot be deep-copied: build it twice
    prepare_qat_(cpu, config)
    prepare_qat_(moved, config)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    for model, inp in ((cpu, x), (moved, x.to(DEVICE))):
        model(inp).square().mean().backward()
    for a, b in zip(moved.parameters(), cpu.parameters(), strict=True):
        _close(a.grad, b.grad, rtol=1e-3)
    convert_qat_(cpu, config)
    convert_qat_(moved, config)
    with torch.no_grad():
        _close(moved(x.to(DEVICE)), cpu(x), rtol=1e-3)


@pytest.mark.parametrize("name", optimizer_names())
def test_every_optimizer_steps_on_the_device_and_resumes_a_cpu_state(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).to(DEVICE)
    opt = build_optimizer(name, model)
    x = torch.randn(8, 16, device=DEVICE)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    cpu_model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    cpu_opt = build_optimizer(name, cpu_model)
    cpu_model(x.cpu()).square().mean().backward()
    cpu_opt.step()
    resumed = build_optimizer(name, model)
    resumed.load_state_dict(cpu_opt.state_dict())
    resumed.zero_grad()
    model(x).square().mean().backward()
    resumed.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_calibration_measures_agree_across_devices():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(500, 3, generator=g) * 3
    labels = torch.randint(0, 3, (500,), generator=g).tolist()
    probs = torch.softmax(logits, -1)
    assert expected_calibration_error(probs.to(DEVICE), labels) == pytest.approx(
        expected_calibration_error(probs, labels), abs=1e-6)
    assert fit_temperature(logits.to(DEVICE), labels) == pytest.approx(fit_temperature(logits, labels), rel=1e-4)


def test_fit_trains_on_the_device():
    from nnforge.train import TrainConfig, fit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
    result = fit(model, [(x, y)] * 30, config=TrainConfig(max_steps=30, lr=1e-2, device=DEVICE))  # memorise
    assert {p.device.type for p in model.parameters()} == {torch.device(DEVICE).type}
    assert result.steps == 30 and result.losses[-1] < 0.5 * result.losses[0]
