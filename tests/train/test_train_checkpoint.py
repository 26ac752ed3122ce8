"""Checkpoints: exact resume (batch functions and iterables), file format, pruning, damage."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from nnforge.errors import IntegrityError
from nnforge.train import Event, TensorBatches, TrainConfig, fit, latest_checkpoint, load_checkpoint, on


class Interrupted(Exception):
    """Simulates the process dying right after a checkpoint."""


def crash_at(step: int):
    def crash(state):
        if state.step == step:
            raise Interrupted

    return on(Event.CHECKPOINT, crash)


def dropout_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, 3))


def random_batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nanoGPT-style: draws from the global RNGs (torch, numpy, random), so resume needs their states."""
    x = torch.randn(8, 6) + float(np.random.rand()) + random.random()
    return x, (x[:, 0] > x[:, 1]).long() + (x[:, 2] > 1).long()


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_resume_is_exact_with_a_batch_function(tmp_path):
    config = TrainConfig(max_steps=40, grad_accum=2, lr=3e-3, clip_norm=0.5, schedule="cosine", warmup_steps=5,
                         checkpoint_every=10, checkpoint_dir=str(tmp_path / "a"), eval_every=10, eval_batches=2)
    full_model = dropout_mlp(0)
    full = fit(full_model, random_batch, config=config, eval_data=random_batch)

    config_b = config.replace(checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(Interrupted):
        fit(dropout_mlp(0), random_batch, config=config_b, eval_data=random_batch, callbacks=[crash_at(20)])
    torch.manual_seed(123)  # the resumed process starts from other RNG states and other weights
    resumed_model = dropout_mlp(1)
    resumed = fit(resumed_model, random_batch, config=config_b, eval_data=random_batch,
                  resume_from=tmp_path / "b")

    assert resumed.start_step == 20 and resumed.steps == 40
    assert resumed.losses == full.losses[20:]  # exact equality, step by step
    assert resumed.lrs == full.lrs[20:]
    assert resumed.evals == full.evals[2:]
    assert torch.equal(weights(resumed_model), weights(full_model))


def test_resume_is_exact_mid_epoch_with_an_iterable(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 6, generator=g)
    y = torch.randint(0, 3, (100,), generator=g)
    config = TrainConfig(max_steps=30, lr=3e-3, checkpoint_every=13, checkpoint_dir=str(tmp_path / "a"))
    full_model = dropout_mlp(0)
    full = fit(full_model, TensorBatches(x, y, batch_size=16, seed=5), config=config)  # 7 batches an epoch
    config = config.replace(checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(Interrupted):
        fit(dropout_mlp(0), TensorBatches(x, y, batch_size=16, seed=5), config=config, callbacks=[crash_at(13)])
    resumed_model = dropout_mlp(2)
    resumed = fit(resumed_model, TensorBatches(x, y, batch_size=16, seed=5), config=config,
                  resume_from=tmp_path / "b" / "step-000013.safetensors")
    assert resumed.losses == full.losses[13:]
    assert torch.equal(weights(resumed_model), weights(full_model))


class TiedLM(nn.Module):
    """Embedding and output layer share one weight (as in GPT models)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.out = nn.Linear(8, 11, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(idx))  # (B, T, V)


def test_checkpoint_file_is_safetensors_with_json_and_keeps_ties(tmp_path):
    def batch_fn(i: int):
        idx = torch.randint(0, 11, (4, 5))
        return idx, (idx + 1) % 11

    config = TrainConfig(max_steps=6, checkpoint_every=2, keep_checkpoints=2, checkpoint_dir=str(tmp_path))
    fit(TiedLM(), batch_fn, config=config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000004.safetensors", "step-000006.safetensors"]
    path = latest_checkpoint(tmp_path)
    assert path is not None and path.name == "step-000006.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["nnforge.train"])
    assert "model/emb.weight" in keys and "model/out.weight" not in keys
    assert meta["model_aliases"] == {"out.weight": "emb.weight"}
    assert {"optim/state/0/exp_avg", "optim/state/0/exp_avg_sq", "rng/torch"} <= keys
    assert meta["step"] == 6 and meta["config"]["type"] == "train"
    model = TiedLM()
    load_checkpoint(path, model=model)
    assert model.out.weight is model.emb.weight
    with safe_open(str(path), framework="pt") as f:
        torch.testing.assert_close(model.emb.weight.detach(), f.get_tensor("model/emb.weight"))


def test_damaged_or_missing_checkpoints_raise_integrity_errors(tmp_path):
    bad = tmp_path / "step-000001.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(IntegrityError, match="not a readable checkpoint"):
        load_checkpoint(bad, model=dropout_mlp(0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IntegrityError, match="no checkpoint"):
        fit(dropout_mlp(0), random_batch, config=TrainConfig(max_steps=2), resume_from=tmp_path / "empty")
    with pytest.raises(IntegrityError, match="checkpoint not found"):
        fit(dropout_mlp(0), random_batch, config=TrainConfig(max_steps=2), resume_from=tmp_path / "missing.safetensors")


def _with_meta(src, dst, change):
    """``src`` re-saved as ``dst`` with its JSON document changed by ``change(doc)`` (tensors unchanged)."""
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as f:
        doc = json.loads(f.metadata()["nnforge.train"])
    doc = change(doc)
    save_file(load_file(str(src)), str(dst), metadata={"nnforge.train": doc if isinstance(doc, str) else json.dumps(doc)})
    return dst


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: [1, 2], "not a JSON object"),
    (lambda d: {**d, "format": "other"}, "not an nnforge training checkpoint"),
    (lambda d: {k: v for k, v in d.items() if k != "model_aliases"}, "damaged checkpoint metadata"),
    (lambda d: {**d, "optimizer": "junk"}, "optimizer, scheduler or RNG state does not load"),
    (lambda d: {**d, "rng": {"cuda_devices": 0}}, "optimizer, scheduler or RNG state does not load"),
    (lambda d: {k: v for k, v in d.items() if k != "step"}, "training position does not read"),
    (lambda d: {**d, "epoch": "junk"}, "training position does not read"),
    (lambda d: {**d, "batch_index": -3}, "training position does not read"),
    (lambda d: {**d, "best_metric": "junk"}, "training position does not read"),
])
def test_a_damaged_checkpoint_document_is_an_integrity_error_naming_the_file(tmp_path, change, message):
    """A checkpoint may come from elsewhere: every field of its JSON document is checked, never a traceback."""
    config = TrainConfig(max_steps=4, checkpoint_every=2, checkpoint_dir=str(tmp_path / "ck"))
    fit(dropout_mlp(0), random_batch, config=config)
    bad = _with_meta(latest_checkpoint(tmp_path / "ck"), tmp_path / "bad.safetensors", change)
    with pytest.raises(IntegrityError, match=message) as info:
        fit(dropout_mlp(0), random_batch, config=config.replace(max_steps=6, checkpoint_dir=str(tmp_path / "b")),
            resume_from=bad)
    assert str(bad) in str(info.value)


def test_resume_takes_a_new_lr_and_refuses_what_it_cannot_continue(tmp_path):
    from nnforge.errors import ConfigError

    config = TrainConfig(max_steps=6, lr=1e-3, schedule="cosine", checkpoint_every=3, checkpoint_dir=str(tmp_path))
    fit(dropout_mlp(0), random_batch, config=config)
    # a new lr (the divergence message suggests a lower one) takes effect, though the loaded states carry the old
    six = tmp_path / "step-000006.safetensors"
    lower = fit(dropout_mlp(0), random_batch, resume_from=six,
                config=config.replace(lr=1e-4, schedule="constant", max_steps=8, checkpoint_dir=str(tmp_path / "b")))
    assert lower.lrs == pytest.approx([1e-4, 1e-4])  # the new constant schedule from the first resumed step
    with pytest.raises(ConfigError, match="past max_steps 2"):
        fit(dropout_mlp(0), random_batch, config=config.replace(max_steps=2), resume_from=tmp_path)
    with pytest.raises(IntegrityError, match="AdamW optimizer; this run builds a SGD"):
        model = dropout_mlp(0)
        fit(model, random_batch, config=config, optimizer=torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9),
            resume_from=tmp_path)
    longer = fit(dropout_mlp(0), random_batch, resume_from=six,
                 config=config.replace(max_steps=9, checkpoint_dir=str(tmp_path / "c")))
    assert longer.start_step == 6 and longer.steps == 9  # training on for longer is fine
    assert 0 < longer.lrs[0] <= 1e-3


def test_optimizer_state_of_the_wrong_shape_is_refused_at_load(tmp_path):
    from safetensors.torch import load_file, save_file

    config = TrainConfig(max_steps=2, checkpoint_dir=str(tmp_path / "ck"))
    fit(dropout_mlp(0), random_batch, config=config)
    path = latest_checkpoint(tmp_path / "ck")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("exp_avg"))
    tensors[key] = torch.zeros(5)  # loaded silently before, then a raw torch error at the next step
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(IntegrityError, match="optimizer state 'exp_avg' of parameter .* has shape \\(5,\\)") as info:
        fit(dropout_mlp(0), random_batch, config=config.replace(max_steps=4), resume_from=bad)
    assert str(bad) in str(info.value)


def test_resume_reports_and_uses_the_new_lr_from_the_first_step_also_for_a_built_optimizer(tmp_path):
    from nnforge.optim import build_optimizer

    used = []
    spy = on(Event.BEFORE_OPTIMIZER_STEP, lambda s: used.append(s.optimizer.param_groups[0]["lr"]))
    fit(dropout_mlp(0), random_batch, config=TrainConfig(max_steps=5, lr=1e-3, checkpoint_dir=str(tmp_path / "a")))
    r = fit(dropout_mlp(0), random_batch, resume_from=tmp_path / "a", callbacks=[spy],
            config=TrainConfig(max_steps=8, lr=2e-3, checkpoint_dir=str(tmp_path / "a")))
    assert r.lrs == used == pytest.approx([2e-3] * 3)  # the first resumed step reported 1e-3 before
    # an optimizer built by the caller at a lower lr (the divergence message's advice) is not overwritten
    # by the checkpoint's param groups any more
    cfg = TrainConfig(max_steps=5, checkpoint_dir=str(tmp_path / "b"))
    fit(dropout_mlp(0), random_batch, config=cfg, optimizer=lambda m: build_optimizer("lion", m, lr=1e-3))
    used.clear()
    r = fit(dropout_mlp(0), random_batch, resume_from=tmp_path / "b", callbacks=[spy], config=cfg.replace(max_steps=8),
            optimizer=lambda m: build_optimizer("lion", m, lr=1e-4))
    assert r.lrs == used == pytest.approx([1e-4] * 3)


def test_a_save_killed_mid_write_leaves_no_temp_file_after_the_next_start(tmp_path):
    ck = tmp_path / "ck"
    config = TrainConfig(max_steps=4, checkpoint_every=2, checkpoint_dir=str(ck))
    fit(dropout_mlp(0), random_batch, config=config.replace(max_steps=2))
    stale = ck / ".step-000004.safetensors.ajdoab2z.tmp"  # the name save_checkpoint's mkstemp gives
    stale.write_bytes(b"\0" * 100)
    mine = [ck / ".step-4.safetensors.tmp", ck / "notes.tmp", ck / ".other.safetensors.x.tmp"]
    for p in mine:
        p.write_text("not ours")
    fit(dropout_mlp(0), random_batch, config=config, resume_from=ck)
    assert not stale.exists() and all(p.exists() for p in mine)
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-000002.safetensors", "step-000004.safetensors"]
