"""Worker of ``test_train_ddp.py``'s scenario tests: runs several short ``fit`` calls under torchrun.

    OMP_NUM_THREADS=1 PYTHONPATH=src python -m torch.distributed.run --nproc_per_node=2 \\
        tests/train/ddp_scenarios.py OUT_DIR

The process group is made here once, so every ``fit`` uses it and leaves it alone. Each rank writes
``OUT_DIR/rank<R>.json``: what each scenario saw.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from nnforge.optim import build_optimizer
from nnforge.train import Event, TrainConfig, fit, hessian_refresh, on


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def fixed_batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(i))
    return x, (x[:, 0] > x[:, 1]).long()


def weights(m: nn.Module) -> list[float]:
    return torch.cat([p.detach().flatten() for p in m.parameters()]).tolist()


def main(out: Path, rank: int) -> None:
    doc: dict[str, object] = {}
    cfg = TrainConfig(max_steps=10, device="cpu", log_every=100)

    def stop_on(rank_asking: int, step: int):
        def stop(s):  # one rank only asks to stop
            if s.rank == rank_asking and s.step == step:
                s.stop_training, s.stop_reason = True, "asked"
        return stop

    # a stop asked on one rank at EVAL_END, and at CHECKPOINT, must stop both ranks (it hung before)
    r = fit(model(), fixed_batch, config=cfg.replace(eval_every=2, eval_batches=1, checkpoint_dir=str(out / "a")),
            eval_data=fixed_batch, callbacks=[on(Event.EVAL_END, stop_on(0, 4))])
    doc["stop_eval_end"] = r.steps
    r = fit(model(), fixed_batch, config=cfg.replace(checkpoint_every=3, checkpoint_dir=str(out / "b")),
            callbacks=[on(Event.CHECKPOINT, stop_on(1, 3))])
    doc["stop_checkpoint"] = r.steps

    # Sophia's Hessian estimate is averaged over ranks: the weights stay identical
    m = model()
    opt = build_optimizer("sophia", m, lr=1e-2, hessian_update_interval=2, batch_tokens=8)
    fit(m, fixed_batch, config=cfg, optimizer=opt, callbacks=[hessian_refresh(opt)])
    doc["sophia_weights"] = weights(m)

    # a batch function drawing from the global RNG builds the same global batch on every rank
    seen: list[float] = []

    def random_batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(8, 6)
        seen.append(float(x.sum()))
        return x, (x[:, 0] > x[:, 1]).long()

    m = model()
    fit(m, random_batch, config=cfg.replace(max_steps=3))
    doc["random_batches"], doc["random_weights"] = seen, weights(m)
    (out / f"rank{rank}.json").write_text(json.dumps(doc))


def exit_without_finalizing() -> None:
    """End a rank that used DDP with ``os._exit(0)``, after its files are written and its group destroyed.

    DDP keeps the gloo process group referenced after ``destroy_process_group`` (torch 2.13), so the group's
    worker threads outlive it and are never joined. A worker that finished the last collective drops its
    tensors afterwards, which needs the GIL; if the interpreter is finalizing by then, Python ends that thread
    inside a C++ destructor and the rank aborts with ``terminate called without an active exception``
    (exit -6), as seen once in CI on an overloaded machine. Skipping finalization leaves no such window.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        main(Path(sys.argv[1]), int(os.environ["RANK"]))
    finally:
        dist.destroy_process_group()
    exit_without_finalizing()
