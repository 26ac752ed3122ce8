"""The training loop: learning, accumulation, schedules, events, early stopping, NaN guard, modes, bf16."""

from __future__ import annotations

import hashlib
import io
import math

import pytest
import torch
from torch import nn

from nnforge.errors import ConfigError, StepFailedError
from nnforge.train import (
    Callback,
    EarlyStopping,
    Event,
    ProgressBar,
    TensorBatches,
    TrainConfig,
    TrainingDivergedError,
    accuracy,
    fit,
    lr_factor,
    on,
)


def blobs(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two separable Gaussian blobs in 4-D: an easy classification task."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) + 2.5 * (y[:, None].float() * 2 - 1)
    return x, y


def tiny(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))


def test_fit_learns_and_evaluates_with_metric_fn():
    x, y = blobs()
    model = tiny()
    config = TrainConfig(max_steps=60, lr=1e-2, eval_every=20)
    result = fit(model, TensorBatches(x, y, batch_size=32), config=config,
                 eval_data=TensorBatches(*blobs(128, seed=1), batch_size=64, shuffle=False), metric_fn=accuracy)
    assert result.steps == 60 and len(result.losses) == 60
    assert [e["step"] for e in result.evals] == [20.0, 40.0, 60.0]
    assert result.evals[-1]["accuracy"] >= 0.95
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_grad_accumulation_matches_one_big_batch():
    x, y = blobs(64)

    def run(grad_accum: int) -> torch.Tensor:
        model = tiny()
        rows = 16 // grad_accum

        def batch_fn(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            step, k = divmod(i, grad_accum)
            start = (step * 16) % 64 + k * rows
            return x[start : start + rows], y[start : start + rows]

        config = TrainConfig(max_steps=8, grad_accum=grad_accum, clip_norm=None)
        fit(model, batch_fn, config=config, optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(run(1), run(4), rtol=1e-5, atol=1e-6)


def test_schedules_shape_the_learning_rate():
    cosine = TrainConfig(max_steps=100, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cosine) == pytest.approx(1 / 11)
    assert lr_factor(10, cosine) == pytest.approx(1.0)
    assert lr_factor(55, cosine) == pytest.approx(0.55)
    assert lr_factor(100, cosine) == pytest.approx(0.1)
    wsd = TrainConfig(max_steps=100, schedule="wsd", warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.0)
    assert [lr_factor(s, wsd) for s in (10, 79, 80, 90, 100)] == pytest.approx([1, 1, 1, 0.5, 0])
    x, y = blobs(64)
    config = TrainConfig(max_steps=20, lr=0.01, schedule="cosine", warmup_steps=5)
    result = fit(tiny(), TensorBatches(x, y, batch_size=16), config=config)
    assert result.lrs == pytest.approx([0.01 * lr_factor(s, config) for s in range(20)])


def test_events_fire_in_loop_order(tmp_path):
    x, y = blobs(32)
    seen: list[str] = []
    config = TrainConfig(max_steps=2, grad_accum=2, eval_every=2, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    fit(tiny(), TensorBatches(x, y, batch_size=16), config=config, eval_data=[(x, y)],
        callbacks=[lambda event, state: seen.append(event.value)])
    micro = ["batch_ready", "before_backward", "after_backward"] * 2
    # 2 batches per epoch, 2 micro-batches per step: the second step starts a new epoch
    assert seen == ["fit_start", "epoch_start",
                    "step_start", *micro, "before_optimizer_step", "step_end",
                    "step_start", "epoch_end", "epoch_start", *micro, "before_optimizer_step", "step_end",
                    "eval_start", "eval_end", "checkpoint", "fit_end"]


def test_callback_classes_and_on_helper_can_stop_training():
    x, y = blobs(64)
    steps: list[int] = []

    class StopAtFive(Callback):
        def step_end(self, state):
            if state.step == 5:
                state.stop_training, state.stop_reason = True, "enough"

    result = fit(tiny(), TensorBatches(x, y, batch_size=16), config=TrainConfig(max_steps=50),
                 callbacks=[StopAtFive(), on(Event.STEP_END, lambda s: steps.append(s.step))])
    assert result.steps == 5 and result.stopped_early and result.stop_reason == "enough"
    assert steps == [1, 2, 3, 4, 5]


def test_early_stopping_on_a_named_metric():
    x, y = blobs(64)
    calls = iter(range(100))

    def flat_metric(model, batch):  # improves once, then never again
        return {"score": 1.0 if next(calls) == 0 else 0.5}

    config = TrainConfig(max_steps=100, eval_every=2,
                         early_stopping=EarlyStopping(metric="score", mode="max", patience=3))
    result = fit(tiny(), TensorBatches(x, y, batch_size=16), config=config, eval_data=[(x, y)], metric_fn=flat_metric)
    assert result.steps == 8 and result.stopped_early
    assert "score did not improve" in result.stop_reason
    bad = TrainConfig(max_steps=10, eval_every=2, early_stopping=EarlyStopping(metric="nope"))
    with pytest.raises(ConfigError, match="'nope' is not an evaluation metric"):
        fit(tiny(), TensorBatches(x, y, batch_size=16), config=bad, eval_data=[(x, y)])


def test_nan_guard_names_the_step_and_keeps_the_last_checkpoint(tmp_path):
    x, y = blobs(64)

    def batch_fn(i: int):
        xb = x[(i * 8) % 64 : (i * 8) % 64 + 8].clone()
        if i == 7:  # the 8th step's batch
            xb[0, 0] = float("nan")
        return xb, y[(i * 8) % 64 : (i * 8) % 64 + 8]

    config = TrainConfig(max_steps=20, checkpoint_every=5, checkpoint_dir=str(tmp_path))
    with pytest.raises(TrainingDivergedError) as info:
        fit(tiny(), batch_fn, config=config)
    message = str(info.value)
    assert isinstance(info.value, StepFailedError)
    assert "step 8 of 20" in message and "loss is nan" in message and "step-000005.safetensors" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005.safetensors"]
    digest = hashlib.sha256((tmp_path / "step-000005.safetensors").read_bytes()).hexdigest()
    model = tiny()
    fit(model, lambda i: (x[:8], y[:8]), config=TrainConfig(max_steps=6), resume_from=tmp_path)
    assert hashlib.sha256((tmp_path / "step-000005.safetensors").read_bytes()).hexdigest() == digest


class ModeTrackingSGD(torch.optim.SGD):
    """Stands in for a Schedule-Free optimizer: records train()/eval() calls."""

    requires_train_eval_modes = True

    def __init__(self, params, log: list[str]) -> None:
        super().__init__(params, lr=0.01)
        self.log = log

    def train(self) -> None:
        self.log.append("opt.train")

    def eval(self) -> None:
        self.log.append("opt.eval")

    def step(self, closure=None):  # type: ignore[override]
        self.log.append("opt.step")
        return super().step(closure)


def test_train_eval_mode_optimizers_are_switched(tmp_path):
    x, y = blobs(32)
    log: list[str] = []
    config = TrainConfig(max_steps=2, eval_every=1, checkpoint_every=2, checkpoint_dir=str(tmp_path))
    fit(tiny(), TensorBatches(x, y, batch_size=16), config=config, eval_data=[(x, y)],
        optimizer=lambda m: ModeTrackingSGD(m.parameters(), log),
        callbacks=[on([Event.EVAL_START, Event.CHECKPOINT], lambda s: log.append("eval/ckpt"))])
    assert log == ["opt.train", "opt.step", "opt.eval", "eval/ckpt",
                   "opt.train", "opt.step", "opt.eval", "eval/ckpt", "eval/ckpt"]


def test_bf16_autocast_runs_forward_in_bfloat16():
    x, y = blobs(64)
    model = tiny()
    dtypes: set[torch.dtype] = set()
    model[0].register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    result = fit(model, TensorBatches(x, y, batch_size=16), config=TrainConfig(max_steps=10, lr=1e-2, bf16=True))
    assert dtypes == {torch.bfloat16}
    assert all(math.isfinite(v) for v in result.losses) and model[0].weight.dtype == torch.float32


def test_optimizer_argument_is_checked():
    x, y = blobs(32)
    other = nn.Linear(4, 2)
    with pytest.raises(ConfigError, match="not the model's"):
        fit(tiny(), TensorBatches(x, y, batch_size=16), optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="optimizer must be"):
        fit(tiny(), TensorBatches(x, y, batch_size=16), optimizer=lambda m: "adam")  # type: ignore[arg-type,return-value]


def test_config_is_validated_with_readable_messages():
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        TrainConfig(checkpoint_every=10)
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="linear")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="warmup_steps"):
        TrainConfig(max_steps=10, warmup_steps=20)
    assert TrainConfig(max_steps=5).to_dict()["type"] == "train"


def test_progress_bar_draws_on_its_console_and_library_prints_nothing(capsys):
    from rich.console import Console

    x, y = blobs(32)
    buffer = io.StringIO()
    fit(tiny(), TensorBatches(x, y, batch_size=16), config=TrainConfig(max_steps=4),
        callbacks=[ProgressBar(console=Console(file=buffer, force_terminal=False, width=100))])
    assert "4/4" in buffer.getvalue() and "loss" in buffer.getvalue()
    fit(tiny(), TensorBatches(x, y, batch_size=16), config=TrainConfig(max_steps=2))
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_ddp_demo_runs_on_one_process(tmp_path):
    pytest.importorskip("sklearn")
    from nnforge.train.ddp_demo import main

    doc = main(["--steps", "30", "--out", str(tmp_path)])
    assert doc["steps"] == 30 and (tmp_path / "result.json").is_file()
    assert (tmp_path / "ckpt" / "step-000030.safetensors").is_file()
    assert doc["evals"][-1]["accuracy"] > 0.5


def test_hessian_refresh_feeds_sophia_and_refuses_others():
    import pytest
    import torch
    from torch import nn

    from nnforge.optim import build_optimizer
    from nnforge.train import TensorBatches, TrainConfig, fit, hessian_refresh

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    opt = build_optimizer("sophia", model, lr=1e-3, hessian_update_interval=2)
    fit(model, TensorBatches(x, y, batch_size=16), config=TrainConfig(max_steps=4), optimizer=opt,
        callbacks=[hessian_refresh(opt)])
    assert any(float(st["hessian"].abs().sum()) > 0 for st in opt.state.values())
    with pytest.raises(TypeError, match="update_hessian"):
        hessian_refresh(torch.optim.SGD(model.parameters(), lr=0.1))


def test_a_failed_evaluation_leaves_the_model_in_train_mode():
    model = tiny()
    x, y = blobs()

    def broken_metric(m, batch):
        raise ValueError("metric failed")

    with pytest.raises(ValueError, match="metric failed"):
        fit(model, TensorBatches(x, y, batch_size=32), config=TrainConfig(max_steps=2, eval_every=1),
            eval_data=[(x[:8], y[:8])], metric_fn=broken_metric)
    assert model.training


@pytest.mark.parametrize(("loss_fn", "message"), [
    (lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1], reduction="none"), "shape"),
    (lambda m, b: 1.0, "not a tensor"),
    (lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]).detach(), "requires_grad is False"),
])
def test_a_loss_that_cannot_be_trained_on_is_named(loss_fn, message):
    x, y = blobs()
    with pytest.raises(ConfigError, match=message):
        fit(tiny(), TensorBatches(x, y, batch_size=32), config=TrainConfig(max_steps=2), loss_fn=loss_fn)


def test_batch_function_draws_from_an_rng_seeded_by_index_not_by_what_else_ran() -> None:
    # the global RNG a batch function draws from is seeded from (seed, index): a callback (or dropout)
    # consuming random numbers does not change the batches, and under DDP every rank draws the same
    def run(noisy: bool) -> list[float]:
        seen: list[float] = []

        def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(8, 4)
            seen.append(float(x.sum()))
            return x, (x[:, 0] > 0).long()

        noise = [on(Event.STEP_END, lambda s: torch.rand(7))] if noisy else []
        fit(tiny(dropout=0.5), batch, config=TrainConfig(max_steps=4, device="cpu"), callbacks=noise)
        return seen

    quiet = run(False)
    assert quiet == run(True) and len(set(quiet)) == 4
