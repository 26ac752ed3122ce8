"""Every benchmark script runs in smoke mode (tiny shapes, seconds) and writes nothing, so none can rot."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
RESULTS = BENCHMARKS / "results"
SCRIPTS = sorted(p for p in [*BENCHMARKS.glob("*.py"), *BENCHMARKS.glob("*/*.py")] if not p.name.startswith("_"))
TIMEOUT_S = 120
# the scripts that load all-MiniLM-L6-v2 (torch + transformers imports, one to three model loads, a few forward
# passes on one thread): 4-6x the CPU seconds of their --smoke run measured on this 2-core machine under load
# (quickstart 18, calibration 15, ood_text 24, suite_gate 25), CPU seconds being about an idle machine's wall time
TIMEOUTS_S = {"quickstart.py": 90, "evaluate/calibration.py": 90, "evaluate/ood_text.py": 120,
              "evaluate/suite_gate.py": 120,
              "prune/minilm.py": 150,  # + both models exported to ONNX and timed in ONNX Runtime: 23 CPU s
              "federated/digits.py": 150,  # Ray workers start (about 15 s), then 9 runs of one round, DP and HE
              "federated/scale.py": 120,  # one engine start (about 15 s), one round
              "federated/lora.py": 180,  # one engine start, MiniLM loaded twice and shipped to the workers
              "search/plan_minilm.py": 120,  # the quickstart's smoke slice (baselines, finetune, quantize), prune, recovery
              "serve/quickstart.py": 240}  # a quantize-only MiniLM run, its ONNX export, four servers started


def _committed_results() -> dict[str, str]:
    """Name -> sha256 of every results file a smoke run could overwrite (quick files and in-flight temporary
    files of someone's quick run are not among them: smoke mode would name the main file)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in RESULTS.glob("*.json")
            if not p.name.endswith(".quick.json") and not p.name.startswith(".")}


def run_script(args: list[str], cwd: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run a script in its own process group; on timeout kill the whole group (scripts start processes)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{args[0]} --smoke ran past {timeout} s:\n{out[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def test_every_benchmark_script_is_found():
    names = {str(p.relative_to(BENCHMARKS)) for p in SCRIPTS}
    assert {"quickstart.py", "table.py", "govern/ledger.py", "optim/charlm.py"} <= names
    assert set(TIMEOUTS_S) <= names, f"TIMEOUTS_S names scripts that do not exist: {set(TIMEOUTS_S) - names}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(BENCHMARKS)))
def test_smoke_mode_runs_and_writes_no_results(script, tmp_path):
    before = _committed_results()
    done = run_script([str(script), "--smoke"], cwd=tmp_path,
                      timeout=TIMEOUTS_S.get(str(script.relative_to(BENCHMARKS)), TIMEOUT_S))
    assert done.returncode == 0, f"{script.name} --smoke exited {done.returncode}:\n{done.stdout[-4000:]}"
    assert _committed_results() == before, f"{script.name} --smoke changed benchmarks/results/"
    assert not list(tmp_path.glob("**/*.json.tmp")), "a half-written results file was left behind"


def test_no_benchmark_file_shadows_an_importable_module(tmp_path):
    # the scripts put their own folder first on sys.path: a file named like a package (kernels.py) hides it
    # from everything they import (transformers imports `kernels`); looked up in a clean interpreter
    stems = sorted({p.stem for p in [*BENCHMARKS.glob("*.py"), *BENCHMARKS.glob("*/*.py")]})
    code = ("import importlib.util, sys\n"
            f"print('\\n'.join(n for n in {stems!r} if importlib.util.find_spec(n) is not None))")
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=True)
    shadowing = done.stdout.split()
    assert shadowing == [], f"benchmarks/ files named like importable modules: {shadowing}; rename them"
