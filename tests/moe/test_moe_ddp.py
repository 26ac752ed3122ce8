"""An MoE model trains under torchrun (two CPU ranks, DDP, gloo) as one process does on the same global batches:
experts idle on one rank do not stall DDP, and the auxiliary-loss-free bias moves by the load of all ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _scripts import load_script

HERE = Path(__file__).parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_ddp_trains_an_moe_model_like_one_process(tmp_path):
    ddp_tests = load_script(HERE.parent / "train" / "test_train_ddp.py", "ddp_tests")
    proc = ddp_tests.torchrun(str(HERE / "ddp_moe_worker.py"), tmp_path / "ddp", timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = load_script(HERE / "ddp_moe_worker.py", "ddp_moe_worker").train(tmp_path / "single")
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert ddp["world_size"] == 2 and ddp["steps"] == single["steps"] == 8
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(single["losses"]), rtol=1e-4, atol=1e-5)
    w_ddp = load_file(str(tmp_path / "ddp" / "weights.safetensors"))
    w_one = load_file(str(tmp_path / "single" / "weights.safetensors"))
    bias = "transformer.h.0.mlp.router.bias"
    assert torch.equal(w_ddp[bias], w_one[bias]) and w_one[bias].abs().sum() > 0  # moved, by the global load
    for name in w_one:
        torch.testing.assert_close(w_ddp[name], w_one[name], rtol=1e-4, atol=1e-5, msg=name)
