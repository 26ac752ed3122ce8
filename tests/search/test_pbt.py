"""Population-based training: perturbation inside the space, exploit through checkpoint files, new
hyperparameters taking effect after a resume, every exploit/explore recorded."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnforge.errors import ConfigError
from nnforge.search import Param
from nnforge.search.pbt import PBTConfig, explore, pbt, perturb_value
from nnforge.search.pbt.population import PBTMember, _exploit_explore
from nnforge.train import TensorBatches, latest_checkpoint, load_checkpoint

LR = Param(kind="float", low=1e-3, high=0.5, log=True)


def test_perturb_stays_in_the_space():
    assert perturb_value(LR, 0.1, 1.2) == pytest.approx(0.12)
    assert perturb_value(LR, 0.1, 0.8) == pytest.approx(0.08)
    assert perturb_value(LR, 0.45, 1.2) == 0.5  # clipped to high
    n = Param(kind="int", low=1, high=8)
    assert perturb_value(n, 2, 1.2) == 3 and perturb_value(n, 2, 0.8) == 1  # a small int still moves
    assert perturb_value(n, 1, 0.8) == 1  # not below low
    grid = Param(kind="float", low=0.0, high=1.0, step=0.25)
    assert perturb_value(grid, 0.5, 1.2) == 0.5 and perturb_value(grid, 0.75, 1.2) == 1.0  # on the grid
    cat = Param(kind="categorical", choices=["a", "b"])
    assert perturb_value(cat, "b", 1.2) == "b"


def test_explore_perturbs_resamples_and_follows_conditions():
    space = {"opt": Param(kind="categorical", choices=["adamw", "sgd"]), "lr": LR,
             "momentum": Param(kind="float", low=0.5, high=0.99, when={"opt": ["sgd"]})}
    calls = []

    def fresh(sub):
        calls.append(sorted(sub))
        return {"opt": "sgd", "lr": 0.3, "momentum": 0.9}

    out = explore(space, {"opt": "adamw", "lr": 0.1}, rng=random.Random(0), factors=[1.2],
                  resample_probability=0.0, fresh=fresh)
    assert out == {"opt": "adamw", "lr": pytest.approx(0.12)} and calls == []
    out = explore(space, {"opt": "adamw", "lr": 0.1}, rng=random.Random(0), factors=[1.2],
                  resample_probability=1.0, fresh=fresh)
    # everything resampled; the parent became "sgd", so the child switched on and was drawn too
    assert out == {"opt": "sgd", "lr": 0.3, "momentum": 0.9} and calls == [["opt"], ["lr"], ["momentum"]]


def test_config_checks():
    with pytest.raises(ConfigError, match="interval_steps"):
        PBTConfig(space={"lr": LR}, interval_steps=50, total_steps=10)
    with pytest.raises(ConfigError, match="not a parameter of the space"):
        PBTConfig(space={"lr": Param(kind="float", low=0.1, high=1.0, when={"opt": ["sgd"]})})
    assert PBTConfig(space={"lr": LR}, interval_steps=30, total_steps=100).ready_steps == [30, 60, 90, 100]


def test_bottom_quantile_copies_a_top_checkpoint(tmp_path):
    members = []
    for i, metric in enumerate([1.0, 2.0, 3.0, 9.0]):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        (folder / "step-000010.safetensors").write_bytes(f"weights of {i}".encode())
        members.append(PBTMember(i, {"lr": 0.01 * (i + 1)}, folder, metric=metric))
    config = PBTConfig(space={"lr": LR}, population=4, quantile=0.25, perturb_factors=[0.8],
                       resample_probability=0.0)
    events = _exploit_explore(members, 10, config, random.Random(0), fresh=lambda s: {})
    assert len(events) == 1
    e = events[0]
    assert (e.member, e.source, e.member_metric, e.source_metric) == (3, 0, 9.0, 1.0)
    assert e.old_params == {"lr": 0.04} and e.new_params == {"lr": pytest.approx(0.008)}
    assert (tmp_path / "m3" / "step-000010.safetensors").read_bytes() == b"weights of 0"
    assert members[3].params == e.new_params and members[3].metric == 1.0
    assert [p.name for p in (tmp_path / "m3").iterdir()] == ["step-000010.safetensors"]  # no temporary left


def _regression(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    return TensorBatches(x[:192], y[:192], batch_size=32, seed=seed), TensorBatches(x[192:], y[192:], batch_size=64,
                                                                                      shuffle=False)


def _mse(model: nn.Module, batch) -> torch.Tensor:
    return F.mse_loss(model(batch[0]), batch[1])


def test_pbt_end_to_end_with_optimizer_options_after_resume(tmp_path, one_torch_thread):
    train, val = _regression()
    space = {"lr": Param(kind="float", low=1e-3, high=0.2, log=True),
             "momentum": Param(kind="float", low=0.0, high=0.95)}
    config = PBTConfig(space=space, population=4, interval_steps=10, total_steps=30, quantile=0.25, seed=3,
                       resample_probability=0.0,
                       train={"clip_norm": None, "log_every": 100})

    def model_fn() -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(8, 1)

    def sgd(model: nn.Module, params: dict) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"])

    result = pbt(model_fn, train, config, workdir=tmp_path, eval_data=val, optimizer_fn=sgd, loss_fn=_mse)
    assert result.total_train_steps == 120
    assert all([h["step"] for h in m.history] == [10, 20, 30] for m in result.members)
    assert 1 <= len(result.events) <= 2  # one bottom member per ready point, unless it ties with the top
    for e in result.events:
        history = {m.index: {h["step"]: h for h in m.history} for m in result.members}
        at = {i: history[i][e.step]["metric"] for i in history}
        assert at[e.member] == max(at.values()) and at[e.source] == min(at.values())
        for k, src in history[e.source][e.step]["params"].items():  # perturbed copies of the source's values
            assert any(e.new_params[k] == pytest.approx(min(max(f * src, space[k].low), space[k].high))
                       for f in (0.8, 1.2))
    for m in result.members:  # the last round trained with the member's final hyperparameters, after a resume
        opt = sgd(model_fn(), m.params)
        load_checkpoint(latest_checkpoint(m.checkpoint_dir), model=model_fn(), optimizer=opt, restore_rng=False)
        assert opt.param_groups[0]["lr"] == pytest.approx(m.params["lr"])
        assert opt.param_groups[0]["momentum"] == pytest.approx(m.params["momentum"])
    best = result.best
    assert best.metric == min(m.metric for m in result.members) and math.isfinite(best.metric)
    doc = result.to_dict()
    assert doc["best_member"] == best.index
    assert doc["energy_source"] in ("rapl", "estimate") and doc["energy_j"] == sum(m.energy_j for m in result.members)
    assert all(m.energy_j > 0 for m in result.members)  # each member's training was metered
