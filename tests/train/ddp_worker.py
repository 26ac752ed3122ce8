"""Worker of ``test_train_ddp.py``: trains a tiny MLP with ``nnforge.train.fit`` and writes what it got.

Run alone (one process) or under torchrun (two CPU processes, gloo)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python -m torch.distributed.run --nproc_per_node=2 \\
        tests/train/ddp_worker.py OUT_DIR

Writes ``OUT_DIR/weights.safetensors`` and ``OUT_DIR/result.json`` (rank 0 only).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from nnforge.train import TensorBatches, TrainConfig, accuracy, fit

GLOBAL_BATCH = 16


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()  # 3 classes
    return x, y


def train(out_dir: str | Path, device: str = "cpu") -> dict:
    """Train the same model on the same global batches however many processes run this."""
    out = Path(out_dir)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))
    config = TrainConfig(max_steps=12, lr=1e-2, grad_accum=2, clip_norm=1.0, schedule="cosine", warmup_steps=2,
                         eval_every=6, checkpoint_every=6, checkpoint_dir=str(out / "ckpt"), device=device)
    result = fit(model, TensorBatches(*data(160, seed=1), batch_size=GLOBAL_BATCH, seed=3), config=config,
                 eval_data=TensorBatches(*data(64, seed=2), batch_size=32, shuffle=False), metric_fn=accuracy)
    if int(os.environ.get("RANK", "0")) == 0:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(out / "weights.safetensors"))
        doc = {**result.to_dict(), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
        (out / "result.json").write_text(json.dumps(doc))
    return result.to_dict()


if __name__ == "__main__":
    torch.set_num_threads(1)  # a test script may set global state; the library never does
    train(sys.argv[1], device=sys.argv[2] if len(sys.argv) > 2 else "cpu")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter finalization beside gloo threads that DDP keeps alive (ddp_scenarios.py says why)
