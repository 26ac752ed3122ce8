"""Train the digits CNN with :func:`nnforge.train.fit`, on one process or many (DDP under torchrun).

    python -m nnforge.train.ddp_demo --steps 300                                   # one process
    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 -m nnforge.train.ddp_demo        # two CPU processes (gloo)
    torchrun --nproc_per_node=4 -m nnforge.train.ddp_demo --device cuda             # four GPUs (NCCL)

Every process builds the same global batches; each rank trains on its slice (``--batch-size`` must divide
by the number of processes). Rank 0 writes checkpoints to ``--out``/ckpt and the result to
``--out``/result.json; run the same command again with ``--resume`` to continue from the newest checkpoint.
Needs scikit-learn (``pip install 'nnforge[data]'``) for the digits data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import torch

from nnforge.errors import MissingDependencyError
from nnforge.models import build
from nnforge.train._batches import TensorBatches
from nnforge.train._config import TrainConfig
from nnforge.train._loop import accuracy, fit

__all__ = ["digits_split", "main"]


def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (B, 1, 8, 8) images in [0, 1]: a stratified 80/20 split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise MissingDependencyError("the digits demo needs scikit-learn: pip install 'nnforge[data]'") from exc
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.tensor(digits.target)
    train, test = train_test_split(list(range(len(y))), test_size=0.2, stratify=digits.target, random_state=seed)
    return x[train], y[train], x[test], y[test]


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Parse the command line, train, and write ``result.json`` on rank 0."""
    parser = argparse.ArgumentParser(prog="python -m nnforge.train.ddp_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (all ranks together)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/ddp_demo")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out/ckpt")
    args = parser.parse_args(argv)
    out = Path(args.out)
    x_train, y_train, x_test, y_test = digits_split()
    torch.manual_seed(0)
    model = build("digits-cnn")
    config = TrainConfig(max_steps=args.steps, lr=args.lr, weight_decay=1e-4, schedule="cosine",
                         warmup_steps=min(20, args.steps), eval_every=max(1, args.steps // 3),
                         checkpoint_every=max(1, args.steps // 3), checkpoint_dir=str(out / "ckpt"),
                         device=args.device)
    ckpt = out / "ckpt"
    result = fit(model, TensorBatches(x_train, y_train, batch_size=args.batch_size, drop_last=True), config=config,
                 eval_data=TensorBatches(x_test, y_test, batch_size=512, shuffle=False), metric_fn=accuracy,
                 resume_from=ckpt if args.resume and ckpt.is_dir() else None)
    doc: dict[str, object] = {**result.to_dict(), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    if int(os.environ.get("RANK", "0")) == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(doc, indent=1))
        logging.getLogger("nnforge.train").info("test accuracy %.4f; result in %s", result.evals[-1]["accuracy"],
                                                out / "result.json")
    return doc


if __name__ == "__main__":  # an entry point may set global state; the library never does
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main()
