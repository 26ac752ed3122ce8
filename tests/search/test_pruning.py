"""Pruning: Optuna's pruners stop poor trials from the intermediate evaluations of a real training run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnforge.search import Objective, Param, SearchConfig, search
from nnforge.train import TensorBatches, TrainConfig, fit

optuna = pytest.importorskip("optuna")

MAX_STEPS, EVAL_EVERY = 12, 2  # the pruners' resource is the training step an evaluation reports


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (two spin against each other on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    return x, (x[:, :3].sum(-1) > 0).long() + (x[:, 3] > 1).long()  # 3 classes, a linear-ish rule


def train_trial(ctx):
    """A linear classifier trained with the sampled lr; every evaluation reaches the pruner."""
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    config = TrainConfig(max_steps=MAX_STEPS, lr=ctx.params["lr"], eval_every=EVAL_EVERY, log_every=1000)
    result = fit(model, TensorBatches(*_data(0), batch_size=32), config=config,
                 eval_data=TensorBatches(*_data(1), batch_size=256, shuffle=False),
                 callbacks=[ctx.train_callback("val_loss")])
    ctx.set_attr("steps", result.steps)
    return {"val_loss": result.evals[-1]["loss"]}


# rungs below MAX_STEPS only (hyperband 2, 6; successive halving 2, 4, 8), so a pruned run stops early
@pytest.mark.slow
@pytest.mark.parametrize("pruner,options", [
    ("hyperband", {"min_resource": 2, "max_resource": MAX_STEPS, "reduction_factor": 3}),
    ("successive-halving", {"min_resource": 2, "reduction_factor": 2}),
])
def test_pruner_stops_poor_training_runs_early(tmp_path, pruner, options):
    config = SearchConfig(space={"lr": Param(kind="float", low=1e-5, high=0.3, log=True)},
                          objectives=[Objective(metric="val_loss")], pruner=pruner, pruner_options=options,
                          sampler="random", trials=8, seed=0)
    result = search(train_trial, config, storage=tmp_path / "s.journal")
    pruned = [t for t in result.trials if t.state == "pruned"]
    complete = [t for t in result.trials if t.state == "complete"]
    assert len(pruned) >= 2 and len(pruned) + len(complete) == 8
    assert all(t.attrs["steps"] < MAX_STEPS for t in pruned)  # training really stopped early
    assert all(t.attrs["steps"] == MAX_STEPS for t in complete)
    best = result.best_trial
    assert best is not None and best.state == "complete"
    study = optuna.load_study(study_name="search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal"))))
    curves = {t.number: t.intermediate_values for t in study.trials}
    for t in pruned:  # each stopped trial was behind the best trial at the step where it stopped
        step = max(curves[t.number])
        assert curves[t.number][step] > curves[best.number][step]
        assert t.params["lr"] < best.params["lr"]


def reporting(ctx):
    for step in range(1, 6):
        ctx.report(step, ctx.params["x"] * step)
    return {"y": ctx.params["x"]}


def test_report_raises_pruned_for_a_trial_worse_than_the_median(tmp_path):
    config = SearchConfig(space={"x": Param(kind="categorical", choices=[1.0, 2.0, 3.0])},
                          objectives=[Objective(metric="y")], pruner="median",
                          pruner_options={"n_startup_trials": 2, "n_warmup_steps": 0}, sampler="random",
                          trials=12, seed=0)
    result = search(reporting, config, storage=tmp_path / "s.journal")
    after_startup = [t for t in result.trials if t.number >= 2]
    assert {t.state for t in after_startup if t.params["x"] == 3.0} <= {"pruned"}
    assert any(t.state == "pruned" for t in after_startup)
    assert all(t.state == "complete" for t in result.trials if t.params["x"] == 1.0)


def test_several_objectives_prune_on_the_first_through_a_twin_study(tmp_path):
    def_space = {"x": Param(kind="categorical", choices=[1.0, 2.0, 3.0])}
    config = SearchConfig(space=def_space, objectives=[Objective(metric="y"), Objective(metric="z")],
                          pruner="median", pruner_options={"n_startup_trials": 2, "n_warmup_steps": 0},
                          sampler="random", trials=12, seed=0)
    result = search(reporting_two, config, storage=tmp_path / "s.journal")
    assert any(t.state == "pruned" for t in result.trials)
    assert all(t.state == "complete" for t in result.trials if t.params["x"] == 1.0)
    assert all(t.attrs == {} for t in result.trials)  # the curve is kept, but not among the user's attrs
    assert [t.number for t in result.best] and all(t.state == "complete" for t in result.best)


def reporting_two(ctx):
    return {**reporting(ctx), "z": -ctx.params["x"]}
