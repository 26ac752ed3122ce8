"""Worker of ``test_moe_ddp.py``: trains a tiny ``moe-gpt`` (auxiliary-loss-free balancing) with ``fit``.

    OMP_NUM_THREADS=1 PYTHONPATH=src python -m torch.distributed.run --nproc_per_node=2 tests/moe/ddp_moe_worker.py OUT

Writes ``OUT/weights.safetensors`` (the model's state, selection biases included) and ``OUT/result.json``
(rank 0 only).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from nnforge.moe import build_moe_gpt
from nnforge.train import TrainConfig, fit


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    seq = torch.randint(0, 24, (8, 17), generator=g)
    return seq[:, :-1], seq[:, 1:]


def train(out_dir: str | Path) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    # 8 experts, top-1, 64 tokens per rank: some experts get no token on a rank in some steps
    model = build_moe_gpt(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=24,
                          moe={"num_experts": 8, "hidden": 8, "router_options": {"k": 1}, "balance": "aux-free",
                               "bias_update_rate": 0.01})
    config = TrainConfig(max_steps=8, lr=1e-2, schedule="constant", clip_norm=1.0)
    result = fit(model, batch, config=config, loss_fn=lambda m, b: m(b[0], b[1])[1])
    if int(os.environ.get("RANK", "0")) == 0:
        from safetensors.torch import save_file

        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(out / "weights.safetensors"))  # lm_head is tied to wte
        (out / "result.json").write_text(json.dumps({**result.to_dict(),
                                                     "world_size": int(os.environ.get("WORLD_SIZE", "1"))}))
    return result.to_dict()


if __name__ == "__main__":
    torch.set_num_threads(1)
    train(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as tests/train/ddp_worker.py: no interpreter finalization beside gloo's threads
