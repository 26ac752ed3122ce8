"""WeightAverage: an EMA of the weights (and float buffers) as a training callback, swapped in at the end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _tiny import images, small_cnn
from nnforge.errors import ConfigError
from nnforge.train import Event, TensorBatches, TrainConfig, WeightAverage, fit, on


def _snapshots(n_steps: int, callbacks: list, seed: int = 0) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    """Train a small CNN for ``n_steps`` with ``callbacks``; the state dicts after each step (before any swap)."""
    x, y = images(32, seed=seed)
    model = small_cnn(seed)
    states: list[dict[str, torch.Tensor]] = []
    record = on(Event.STEP_END, lambda s: states.append({k: v.detach().clone() for k, v in s.model.state_dict().items()}))
    fit(model, TensorBatches(x, y, batch_size=16, seed=seed), config=TrainConfig(max_steps=n_steps, lr=1e-2, device="cpu"),
        callbacks=[record, *callbacks])
    return model, states


def test_weight_average_is_the_warmed_up_ema_of_the_steps_and_is_swapped_in():
    ema = WeightAverage(decay=0.6, start_step=2)
    model, states = _snapshots(6, [ema])
    expected = {k: v.clone() for k, v in states[1].items()}  # a copy of the weights until start_step
    for t, state in enumerate(states[2:]):
        d = min(0.6, (1 + t) / (10 + t))
        for k, v in state.items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    assert ema.updates == 4
    average = ema.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(average[k], v)
        torch.testing.assert_close(model.state_dict()[k], v)  # swapped in at the end
    bn = "features.1.running_mean"
    assert not torch.allclose(average[bn], states[-1][bn])  # batch-norm statistics are averaged too
    assert int(average["features.1.num_batches_tracked"]) == 6  # integer buffers are copied


def test_weight_average_without_swap_leaves_the_last_weights_and_copies_on_demand():
    ema = WeightAverage(decay=0.9, swap_at_end=False)
    model, states = _snapshots(5, [ema])
    for k, v in states[-1].items():
        assert torch.equal(model.state_dict()[k], v)
    other = small_cnn(3)
    ema.copy_to(other)
    for k, v in ema.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    assert not torch.equal(ema.state_dict()["head.4.weight"], states[-1]["head.4.weight"])


def test_weight_average_with_zero_decay_is_the_last_weights_and_is_not_swapped_after_a_failure():
    ema = WeightAverage(decay=0.0)
    model, states = _snapshots(3, [ema])
    for k, v in states[-1].items():
        torch.testing.assert_close(ema.state_dict()[k], v)

    def fail(event: Event, state) -> None:
        if event is Event.STEP_END and state.step == 3:
            raise RuntimeError("boom")

    ema = WeightAverage(decay=0.9)
    x, y = images(32)
    model = small_cnn()
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, TensorBatches(x, y, batch_size=16), config=TrainConfig(max_steps=5, lr=1e-2, device="cpu"),
            callbacks=[ema, fail])
    assert not torch.equal(model.state_dict()["head.4.weight"], ema.state_dict()["head.4.weight"])


def test_weight_average_rejects_bad_input():
    with pytest.raises(ConfigError, match="'decay'.*Got 1.0"):
        WeightAverage(decay=1.0)
    with pytest.raises(ConfigError, match="'decay'"):
        WeightAverage(decay=-0.1)
    with pytest.raises(ConfigError, match="'start_step'.*Got -1"):
        WeightAverage(start_step=-1)
    with pytest.raises(ConfigError, match="no average yet"):
        WeightAverage().copy_to(small_cnn())
