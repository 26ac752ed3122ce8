"""Check of robust_digits.py's settings on a validation split carved from TRAIN (never test).

    OMP_NUM_THREADS=1 python benchmarks/evaluate/robust_digits_val.py /tmp/val.json   # 2 processes, ~30 min


The robust_digits benchmark's settings (3,000 steps, Madry eps 0.2, TRADES beta 1) were picked by a sweep
that read test-split robust accuracy. This re-runs the candidate grid with the train split cut 80/20
(stratified, seed 0) and reports robust accuracy on the held-out 20 % only, to see whether the same
settings win when test is never looked at.
"""
from __future__ import annotations

import json
import sys
import time
from multiprocessing import Pool

import numpy as np
import torch

JOBS = [
    {"name": "madry eps0.15", "kind": "adv", "eps": 0.15},
    {"name": "madry eps0.20", "kind": "adv", "eps": 0.20},
    {"name": "trades b1 eps0.20", "kind": "trades", "eps": 0.20, "beta": 1.0},
    {"name": "trades b6 eps0.15", "kind": "trades", "eps": 0.15, "beta": 6.0},
    {"name": "trades b3 eps0.20", "kind": "trades", "eps": 0.20, "beta": 3.0},
    {"name": "madry eps0.25", "kind": "adv", "eps": 0.25},
]


def run(job: dict) -> dict:
    torch.set_num_threads(1)
    from sklearn.model_selection import train_test_split

    from nnforge.data import load
    from nnforge.evaluate.robust import AdversarialTraining, AttackConfig, TradesLoss, robust_accuracy
    from nnforge.models import build
    from nnforge.train import TensorBatches, TrainConfig, fit

    x, y = load("digits").splits["train"]
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    xtr, ytr, xva, yva = (torch.from_numpy(np.ascontiguousarray(a)) for a in (xtr, ytr, xva, yva))
    steps, seed = 3000, 0
    torch.manual_seed(seed)
    model = build("digits-cnn")
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, betas=(0.9, 0.99), weight_decay=0.1)
    cfg = TrainConfig(max_steps=steps, lr=4e-3, schedule="cosine", warmup_steps=steps // 20, clip_norm=1.0,
                      log_every=100000, seed=seed, device="cpu")
    att = AttackConfig(kind="pgd", norm="linf", eps=job["eps"], steps=7, seed=seed)
    cbs, loss_fn = [], None
    if job["kind"] == "adv":
        cbs.append(AdversarialTraining(att, ratio=1.0))
    else:
        tr = TradesLoss(att, beta=job["beta"])
        cbs.append(tr.callback)
        loss_fn = tr
    t0 = time.perf_counter()
    fit(model, TensorBatches(xtr, ytr, batch_size=64, seed=seed), config=cfg, optimizer=opt, callbacks=cbs,
        loss_fn=loss_fn)
    model.eval()
    e01 = AttackConfig(kind="pgd", norm="linf", eps=0.1, steps=10, seed=0)
    res = {**job, "val_clean": robust_accuracy(model, xva, yva, None),
           "val_pgd01": robust_accuracy(model, xva, yva, e01, batch_size=512),
           "train_s": round(time.perf_counter() - t0, 1), "n_train": len(ytr), "n_val": len(yva)}
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: robust_digits_val.py OUT.json")
    with Pool(2) as pool:
        out = pool.map(run, JOBS, chunksize=1)
    json.dump(out, open(sys.argv[1], "w"), indent=1)
