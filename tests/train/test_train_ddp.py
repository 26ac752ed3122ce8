"""Two CPU processes under torchrun (DDP, gloo) train like one process on the same global batches."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _scripts import load_script

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"

# Two ranks each average the loss over half of the global batch, and DDP averages their gradients; one
# process averages over the whole batch. Same maths, different float32 summation order, so a few ulps
# apart per step. Measured after 12 AdamW steps: losses 1e-7 relative, weights 6e-8 absolute (5e-6
# relative on weights near zero), hence allclose with rtol 1e-5 plus atol 1e-6.
RTOL, ATOL = 1e-5, 1e-6


def torchrun(script: str, out: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Two CPU ranks of ``script`` under torchrun; none outlives the call, whatever happens.

    ``--standalone`` lets torchrun bind its own free port (a port picked here and bound later could be taken
    in between). torchrun starts each rank in its own session, so killing torchrun alone would orphan them:
    on a timeout it gets SIGTERM, which makes it kill its ranks, and any rank still there is killed after.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           str(HERE / script), str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{script} ran past {timeout:.0f} s under torchrun (ranks disagreed about stopping?)")
    finally:
        if proc.poll() is None:  # timed out or interrupted (pytest-timeout, Ctrl-C)
            ranks: list[str] = []
            with contextlib.suppress(OSError):
                ranks = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            proc.terminate()  # torchrun kills its ranks on SIGTERM
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            for pid in ranks:  # each rank leads its own process group: kill whatever torchrun left
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(pid), signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def load_worker():
    return load_script(HERE / "ddp_worker.py", "ddp_worker")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_ddp_matches_one_process(tmp_path):
    proc = torchrun("ddp_worker.py", tmp_path / "ddp", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = load_worker().train(tmp_path / "single")
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert ddp["world_size"] == 2 and ddp["steps"] == single["steps"] == 12
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(single["losses"]), rtol=RTOL, atol=ATOL)
    for a, b in zip(ddp["evals"], single["evals"], strict=True):
        assert a.keys() == b.keys()
        torch.testing.assert_close(torch.tensor(list(a.values())), torch.tensor(list(b.values())),
                                   rtol=RTOL, atol=ATOL)
    w_ddp, w_one = load_file(str(tmp_path / "ddp" / "weights.safetensors")), load_file(str(tmp_path / "single" / "weights.safetensors"))
    for name in w_one:
        torch.testing.assert_close(w_ddp[name], w_one[name], rtol=RTOL, atol=ATOL)
    # only rank 0 wrote checkpoints, one file per checkpoint
    assert sorted(p.name for p in (tmp_path / "ddp" / "ckpt").iterdir()) == ["step-000006.safetensors",
                                                                          "step-000012.safetensors"]


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> tuple[dict, dict]:
    """Both ranks' reports from one torchrun launch of ``ddp_scenarios.py``."""
    out = tmp_path_factory.mktemp("ddp_scenarios")
    proc = torchrun("ddp_scenarios.py", out, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tuple(json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_stop_asked_on_one_rank_at_any_event_stops_all(scenarios):
    for rank in scenarios:
        assert rank["stop_eval_end"] == 4 and rank["stop_checkpoint"] == 3


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_sophia_hessian_refresh_keeps_ranks_identical(scenarios):
    r0, r1 = scenarios
    assert r0["sophia_weights"] == r1["sophia_weights"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_batch_function_drawing_from_the_global_rng_is_the_same_on_every_rank(scenarios):
    r0, r1 = scenarios
    assert len(r0["random_batches"]) == 3 and r0["random_batches"] == r1["random_batches"]
    assert r0["random_weights"] == r1["random_weights"]
