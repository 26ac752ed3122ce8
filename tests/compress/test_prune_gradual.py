"""Gradual pruning as a training callback: the cubic schedule, masks that hold through training, recovery, and
movement scores choosing differently from magnitude on a planted problem."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nnforge.compress import NMConfig, UnstructuredConfig, prune_
from nnforge.compress.prune.gradual import GradualPruneConfig, GradualPruning, cubic_sparsity, gradual_pruning_callback
from nnforge.errors import ConfigError
from nnforge.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only wait on a busy machine


def test_cubic_schedule_follows_zhu_and_gupta() -> None:
    cfg = GradualPruneConfig(final_sparsity=0.8, start_step=10, end_step=110, every=10)
    assert cubic_sparsity(5, cfg) == 0.0 and cubic_sparsity(10, cfg) == 0.0
    assert cubic_sparsity(60, cfg) == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert cubic_sparsity(65, cfg) == cubic_sparsity(60, cfg)  # held between pruning events
    assert cubic_sparsity(110, cfg) == pytest.approx(0.8) and cubic_sparsity(500, cfg) == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="end_step"):
        GradualPruneConfig(start_step=10, end_step=10)


def _regression(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 16, generator=g)
    teacher = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        y = teacher(x)
    torch.manual_seed(seed + 1)
    return x, y, nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


def _mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - y).square().mean())


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, callbacks: list, lr: float = 1e-2,
         weight_decay: float = 0.0) -> None:
    fit(model, lambda i: (x, y), config=TrainConfig(max_steps=steps, lr=lr, weight_decay=weight_decay, log_every=10_000,
                                                    device="cpu"),
        loss_fn=lambda m, b: (m(b[0]) - b[1]).square().mean(), callbacks=callbacks)


def test_gradual_pruning_with_recovery_beats_one_shot_at_the_same_sparsity() -> None:
    x, y, model = _regression()
    _fit(model, x, y, 120, [])
    one_shot = copy.deepcopy(model)
    prune_(one_shot, UnstructuredConfig(sparsity=0.8))
    cb = gradual_pruning_callback(GradualPruneConfig(final_sparsity=0.8, end_step=60, every=15))
    _fit(model, x, y, 100, [cb], weight_decay=0.1)  # decay and momentum must not revive a pruned weight
    for layer in (model[0], model[2]):
        assert float((layer.weight == 0).float().mean()) == pytest.approx(0.8, abs=1 / layer.weight.numel())
    levels = [s for _, s in cb.history]
    assert levels == sorted(levels) and levels[-1] == pytest.approx(0.8)
    assert _mse(model, x, y) < 0.5 * _mse(one_shot, x, y), (_mse(model, x, y), _mse(one_shot, x, y))
    assert cb.report is not None and {c.name for c in cb.report.changed} == {"0", "2"}
    assert "sparsity 0.7998 (819 of 1024" in cb.report.changed[0].detail and "cubic schedule" in cb.report.changed[0].detail
    assert cb.final_config().sparsity == 0.8


def test_movement_drops_weights_moving_to_zero_where_magnitude_drops_growing_ones() -> None:
    """Features 0-7 matter (teacher weight 1) but start small (0.3); features 8-15 do not (teacher weight 0)
    but start large (1.0). Pruned to 50% after 10 steps, magnitude keeps the wrong half, movement the right one."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    y = x[:, :8].sum(1, keepdim=True)
    kept = {}
    for criterion in ("magnitude", "movement"):
        model = nn.Sequential(nn.Linear(16, 1, bias=False))
        with torch.no_grad():
            model[0].weight.copy_(torch.cat([torch.full((8,), 0.3), torch.full((8,), 1.0)]).unsqueeze(0))
        cb = gradual_pruning_callback(GradualPruneConfig(final_sparsity=0.5, end_step=10, every=10, criterion=criterion))
        _fit(model, x, y, 60, [cb], lr=2e-2)
        kept[criterion] = (model[0].weight[0] != 0).nonzero().flatten().tolist()
        kept[criterion + "_loss"] = _mse(model, x, y)
    assert kept["movement"] == list(range(8)) and kept["magnitude"] == list(range(8, 16))
    assert kept["movement_loss"] < 0.1 * kept["magnitude_loss"]


def test_global_scope_and_resume_keep_the_schedule_overall() -> None:
    """Driven event by event (no training): a global schedule spares the layer of large weights; a new callback
    on the pruned model (a resumed run) counts the zeros already there as pruned."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8))
    with torch.no_grad():
        model[1].weight.mul_(10.0)
    cfg = GradualPruneConfig(final_sparsity=0.5, end_step=20, every=10, scope="global")
    cb = gradual_pruning_callback(cfg)
    state = SimpleNamespace(model=model, step=0)
    cb.fit_start(state)
    for step in (10, 20):
        state.step = step
        cb.step_end(state)
    zeros = [int((m.weight == 0).sum()) for m in (model[0], model[1])]
    assert sum(zeros) == 384 and zeros[0] > 0.5 * 512 > zeros[1]  # half of 512 + 256 weights, mostly layer 0
    again = gradual_pruning_callback(cfg)
    state.step = 15
    again.fit_start(state)
    assert [int((~again.masks[n]).sum()) for n in ("0", "1")] == zeros


# --- N:M at the end of the schedule ------------------------------------------------------------------------


def _drive(model: nn.Module, cfg: GradualPruneConfig, steps: list[int]) -> tuple[GradualPruning, list[torch.Tensor]]:
    """Run the callback's events without training; the first layer's mask after each pruning event."""
    from types import SimpleNamespace

    cb = gradual_pruning_callback(cfg)
    state = SimpleNamespace(model=model, step=0)
    cb.fit_start(state)
    masks = []
    for step in steps:
        state.step = step
        cb.step_end(state)
        masks.append(cb.masks["0"].clone())
    cb.fit_end(state)
    return cb, masks


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_gradual_nm_ends_in_the_pattern_and_is_capped_on_the_way(n: int, m: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 12), nn.Linear(12, 6))  # 12 inputs: no 4:8
    cfg = GradualPruneConfig(n=n, m=m, end_step=30, every=10)
    assert cfg.final_sparsity == pytest.approx(1 - n / m) and cfg.pattern == f"{n}:{m}"
    cb, masks = _drive(model, cfg, [10, 20, 30])
    per_group = [(~mk).reshape(24, -1, m).sum(-1) for mk in masks]  # zeros in each group of m inputs
    assert [int((~mk).sum()) for mk in masks] == [round(cubic_sparsity(s, cfg) * 768) for s in (10, 20, 30)]
    assert all(int(g.max()) <= m - n for g in per_group)  # never more than m - n of a group gone
    assert int((per_group[0] == 0).sum()) > 0  # an early event is finer than N:M: some groups still whole
    assert (masks[0] >= masks[1]).all() and (masks[1] >= masks[2]).all()  # masks only grow
    assert ((model[0].weight.reshape(24, -1, m) != 0).sum(-1) == n).all()  # exactly n of every m at the end
    assert isinstance(cb.final_config(), NMConfig) and cb.final_config().m == m
    assert cb.report is not None and f"{n}:{m}" in cb.report.changed[0].detail
    skipped = dict(cb.report.skipped)
    if m == 8:  # 12 inputs: no 4:8 pattern fits, left dense and said so
        assert "not a multiple of 8" in skipped["3"] and "3" not in cb.masks and (model[3].weight != 0).all()
    else:
        assert ((model[3].weight.reshape(6, -1, 4) != 0).sum(-1) == 2).all()


def test_nm_capped_keep_matches_a_brute_force_reference() -> None:
    from nnforge.compress.prune.gradual import nm_capped_keep

    g = torch.Generator().manual_seed(3)
    scores = torch.randn(5, 16, generator=g)
    for drop in range(0, 9):
        keep = nm_capped_keep(scores, drop, 2, 4)
        for r in range(5):  # greedy: lowest score first, skipping a weight whose group has lost 2 already
            ref = torch.ones(16, dtype=torch.bool)
            for i in torch.argsort(scores[r], stable=True).tolist():
                if int((~ref).sum()) == drop:
                    break
                if int((~ref[i // 4 * 4:i // 4 * 4 + 4]).sum()) < 2:
                    ref[i] = False
            assert torch.equal(keep[r], ref), (drop, r)
    assert ((nm_capped_keep(scores, 8, 2, 4).reshape(5, 4, 4)).sum(-1) == 2).all()


def test_gradual_nm_global_scope_ends_in_the_pattern_in_every_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8))
    with torch.no_grad():
        model[1].weight.mul_(10.0)
    _drive(model, GradualPruneConfig(n=2, m=4, end_step=20, every=10, scope="global"), [10])
    zeros = [int((mod.weight == 0).sum()) for mod in (model[0], model[1])]
    assert sum(zeros) == round(cubic_sparsity(10, GradualPruneConfig(n=2, m=4, end_step=20, every=10)) * 768)
    assert zeros[0] > zeros[1]  # the small weights go first, across layers
    _drive(model, GradualPruneConfig(n=2, m=4, end_step=20, every=10, scope="global"), [20])
    for mod in (model[0], model[1]):
        assert ((mod.weight.reshape(mod.out_features, -1, 4) != 0).sum(-1) == 2).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 2}, "both 'n' and 'm'"),
    ({"n": 4, "m": 4}, "smaller than 'm'"),
    ({"n": 2, "m": 4, "final_sparsity": 0.8}, "1 - n/m"),
])
def test_gradual_nm_options_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GradualPruneConfig(**kwargs)


# --- the registered transform: prune_(model, config, train=...) ------------------------------------------


def test_gradual_is_a_pruning_transform_that_prunes_while_train_runs() -> None:
    from nnforge.compress import apply_, load_transform_config
    from nnforge.config import load_config

    x, y, model = _regression()
    cfg = load_transform_config({"type": "gradual_prune", "data": {"n": 2, "m": 4, "end_step": 20, "every": 5}},
                                "prune")
    assert isinstance(cfg, GradualPruneConfig)
    with pytest.raises(ConfigError, match="prunes while the model trains"):
        prune_(copy.deepcopy(model), cfg)
    report = prune_(model, cfg, lambda name, mod: name != "2", train=lambda m, cbs: _fit(m, x, y, 30, cbs))
    assert [c.name for c in report.changed] == ["0"]  # the filter left "2" out
    assert ((model[0].weight.reshape(64, -1, 4) != 0).sum(-1) == 2).all() and (model[2].weight != 0).all()
    skeleton = _regression()[2]
    apply_(skeleton, load_config(report.config), skeleton=True)  # what a saved variant's rebuild does
    skeleton.load_state_dict(model.state_dict())
    assert torch.equal(skeleton(x), model(x))
