"""Benchmark: ``nnforge serve`` with the quickstart's int8 variant against the plain servers a user would write.

    python benchmarks/serve/quickstart.py            # full: the quickstart run, 5 rounds x 3 concurrencies x 20 s, a 60 s soak
    python benchmarks/serve/quickstart.py --quick    # a small quickstart run, 1 round of 5 s, a 10 s soak
    python benchmarks/serve/quickstart.py --smoke    # an untrained quantize-only run, 2 s loads; writes nothing

Servers (each its own process, one uvicorn worker, all on 127.0.0.1, started once and kept up):

- **nnforge**: ``nnforge serve RUN --variant int8``: the backend it measured fastest at start-up (PyTorch, its
  native int8 encoder or ONNX Runtime), dynamic batching (max batch 32, max wait 2 ms), the run's OOD guard
  (inputs it flags go to the review queue), caller tokens, every decision in the ledger.
- **fastapi_torch_fp32**, **fastapi_torch_int8**: FastAPI + PyTorch per request on the run's fp32 / int8 weights.
- **fastapi_ort**: FastAPI + ONNX Runtime on nnforge's ONNX export of the int8 variant (one session, defaults).

The load generator (``nnforge.deploy.serve.loadtest``: closed-loop asyncio clients, one input a request, the
quickstart's test passages in turn) runs in this process on the same 2 cores as every server. Rounds
interleave the servers (their order rotates each round) and the concurrencies 1, 4 and 16. Throughput and
latency percentiles are per 20 s load; the summary gives medians over rounds, the ratio's interval is the
bootstrap over rounds. The soak: 16 clients for 60 s on nnforge alone, every reply checked against the ledger
(``lost_ledger_records``: answers whose request and input hash no ``serve.decisions`` event holds).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, pick, ratio_with_ci, write_results  # noqa: E402

HERE = Path(__file__).resolve().parent
SERVERS = ("nnforge", "fastapi_torch_fp32", "fastapi_torch_int8", "fastapi_ort")
SMOKE_RECIPE = """
name: serve-smoke
seed: 0
model: {name: minilm}
data: {dataset: shakespeare-genre, options: {passages_per_play: 2}}
steps:
  - quantize: {scheme: int8}
"""


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"rounds": pick(args, full=5, quick=1, smoke=1), "seconds": pick(args, full=20.0, quick=5.0, smoke=2.0),
            "concurrency": pick(args, full=[1, 4, 16], quick=[1, 16], smoke=[4]),
            "soak_seconds": pick(args, full=60.0, quick=10.0, smoke=2.0),
            "run": pick(args, full="quickstart", quick="quickstart-small", smoke="quantize-only"),
            "browser_inputs": pick(args, full=200, quick=200, smoke=8)}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nnforge(*argv: str, cwd: Path, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "nnforge", *argv], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def make_run(kind: str, work: Path, env: dict[str, str]) -> str:
    """The run to serve, made here by the recipe (full: the quickstart as shipped)."""
    if kind == "quickstart":
        _nnforge("run", "quickstart", cwd=work, env=env)
    elif kind == "quickstart-small":
        _nnforge("run", "quickstart", "--set", "data.options.passages_per_play=20", "--set", "steps[1].train.epochs=1",
                 "--set", "steps[3].repeats=3", "--set", "steps[4].enforce=false", cwd=work, env=env)
    else:
        (work / "smoke.yaml").write_text(SMOKE_RECIPE)
        _nnforge("run", "smoke.yaml", cwd=work, env=env)
    return next((work / "runs").iterdir()).name


def _users(work: Path) -> tuple[str, str]:
    """A bootstrap admin, a caller and a reviewer in the workspace's ledger; returns (caller token, reviewer
    token)."""
    from nnforge.govern.users import UserStore
    from nnforge.ledger import Ledger

    loc = str(work / ".nnforge" / "ledger.db")
    store = UserStore.for_ledger(loc)
    with Ledger.open(loc) as led:
        admin_token = store.add("bench-admin", "admin", by=None, ledger=led)[1]
        admin = store.authenticate(admin_token)
        caller_token = store.add("bench-caller", "caller", by=admin, ledger=led)[1]
        reviewer_token = store.add("bench-reviewer", "reviewer", by=admin, ledger=led)[1]
    return caller_token, reviewer_token


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> dict[str, Any]:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            r = httpx.get(f"{url}/health", timeout=2)
            if r.status_code == 200:
                return dict(r.json())
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server at {url} did not start in {timeout:.0f} s: {log.read_text()[-3000:]}")


def start_servers(work: Path, run: str, onnx: Path, env: dict[str, str], names: tuple[str, ...] = SERVERS,
                  smoke: bool = False) -> dict[str, Any]:
    """nnforge first (it measures its backends at start-up, so alone), then the three baselines at once."""
    servers: dict[str, Any] = {}
    cmds = {
        "nnforge": [sys.executable, "-m", "nnforge", "serve", run, "--variant", "int8", "--max-batch", "32",
                    "--max-wait-ms", "2", *(["--backend", "torch"] if smoke else [])],
        "fastapi_torch_fp32": [sys.executable, str(HERE / "_baselines.py"), "--kind", "torch-fp32", "--run", run],
        "fastapi_torch_int8": [sys.executable, str(HERE / "_baselines.py"), "--kind", "torch-int8", "--run", run],
        "fastapi_ort": [sys.executable, str(HERE / "_baselines.py"), "--kind", "ort", "--run", run,
                        "--onnx", str(onnx)],
    }
    for group in (["nnforge"], [n for n in names if n != "nnforge"]):
        for name in group:
            port = _port()
            log = work / f"{name}.log"
            proc = subprocess.Popen([*cmds[name], "--port", str(port)], cwd=work, env=env, stdout=log.open("wb"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
            servers[name] = {"proc": proc, "url": f"http://127.0.0.1:{port}", "log": log}
        for name in group:
            servers[name]["health"] = _wait(servers[name]["url"], servers[name]["proc"], servers[name]["log"])
    return servers


def stop_servers(servers: dict[str, Any]) -> None:
    for s in servers.values():
        if s["proc"].poll() is None:
            os.killpg(s["proc"].pid, signal.SIGTERM)
    for s in servers.values():
        try:
            s["proc"].wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(s["proc"].pid, signal.SIGKILL)


def export_onnx_variant(work: Path, run: str, env: dict[str, str], texts: list[str],
                        ways: tuple[str, ...] = ("rowwise", "nbits", "integer")) -> tuple[Path, dict[str, Any]]:
    """nnforge's ONNX export of the int8 variant for the ORT baseline, written each of the three ways its int8
    layers can be (rowwise, nbits: MatMulNBits at accuracy_level 4, integer: MatMulInteger) and the one ONNX
    Runtime runs fastest kept (median ms per request at batch 1, interleaved rounds): the peer at its best."""
    import statistics as st

    import onnxruntime as ort

    from nnforge.recipes import load_run

    tokenizer = load_run(run).model("int8").tokenizer
    sessions: dict[str, Any] = {}
    about: dict[str, Any] = {}
    for way in ways:
        out = work / f"onnx-{way}"
        try:
            _nnforge("export", run, "--variant", "int8", "--format", "onnx", "--int8-matmul", way, "--out", str(out),
                     cwd=work, env=env)
        except subprocess.CalledProcessError as exc:
            about[way] = {"skipped": f"export failed (exit {exc.returncode}): its verification or the export"}
            continue
        sessions[way] = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = [{k: v.astype("int64") for k, v in tokenizer([x], return_tensors="np").items()
              if k in ("input_ids", "attention_mask")} for x in texts[:24]]
    times: dict[str, list[float]] = {w: [] for w in sessions}
    for rnd in range(4):
        for way, sess in sessions.items():
            t0 = time.perf_counter()
            for f in feeds:
                sess.run(["logits"], f)
            if rnd:  # the first round warms up
                times[way].append((time.perf_counter() - t0) / len(feeds) * 1000)
    for way in sessions:
        about[way] = {"ms_per_request_batch_1": round(st.median(times[way]), 3)}
    best = min(sessions, key=lambda w: about[w]["ms_per_request_batch_1"])
    return work / f"onnx-{best}" / "model.onnx", {"chosen": best, "measured": about}


def server_labels(url: str, texts: list[str], caller: str, reviewer: str) -> list[str]:
    """The served model's label for each text: the answer, or for an input it sent to review (label withheld
    from the caller) the model's label on the review item."""
    import httpx

    out: list[str | None] = []
    items: dict[int, int] = {}
    with httpx.Client(base_url=url, timeout=120) as c:
        for i in range(0, len(texts), 50):
            reply = c.post("/predict", json={"inputs": texts[i:i + 50]}, headers={"Authorization": f"Bearer {caller}"})
            reply.raise_for_status()
            for p in reply.json()["predictions"]:
                if p["label"] is None:
                    items[int(p["review_item"])] = len(out)
                out.append(p["label"])
        if items:
            queued = c.get("/review", headers={"Authorization": f"Bearer {reviewer}"}).json()
            for item in queued:
                if item["id"] in items:
                    out[items[item["id"]]] = item["label"]
    return [str(x) for x in out]


def browser_agreement(work: Path, run: str, env: dict[str, str], texts: list[str], served: list[str]) -> dict[str, Any]:
    """`nnforge export RUN --variant int8 --format web`, its page in headless Chromium, its labels against the
    server's on the same inputs."""
    from nnforge.deploy.web import browser_predict

    web = work / "web"
    _nnforge("export", run, "--variant", "int8", "--format", "web", "--out", str(web), cwd=work, env=env)
    got = [p["label"] for p in browser_predict(web, texts)]
    same = sum(a == b for a, b in zip(got, served, strict=True))
    return {"inputs": len(texts), "same_label": same, "agreement": same / len(texts),
            "differ": [{"i": i, "browser": a, "server": b} for i, (a, b) in enumerate(zip(got, served, strict=True))
                       if a != b]}


def lost_records(work: Path, run: str, replies: list[dict[str, Any]]) -> int:
    from nnforge.deploy.serve.service import input_sha256
    from nnforge.ledger import Ledger

    with Ledger.open(str(work / ".nnforge" / "ledger.db")) as led:
        rows = {(row["request"], row["input_sha256"]) for e in led.events(run=run, kind="serve.decisions")
                for row in e.data["decisions"]}
    return sum((r["reply"]["request"], input_sha256(r["input"])) not in rows for r in replies)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    s = settings(args)

    from nnforge.deploy.serve.loadtest import load_test
    from nnforge.recipes import load_run
    from nnforge.recipes.serve_run import sample_inputs

    work = Path(tempfile.mkdtemp(prefix="nnforge-bench-serve-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    t0 = time.time()
    run = make_run(s["run"], work, env)
    print(f"run {run} made in {time.time() - t0:.0f} s", flush=True)
    caller, reviewer = _users(work)
    os.chdir(work)
    r = load_run(run)
    texts, _, split = sample_inputs(r, "test", n=10_000)
    smoke = s["run"] == "quantize-only"  # a check that the script runs: two servers, one ONNX form, no browser
    names = ("nnforge", "fastapi_ort") if smoke else SERVERS
    onnx, ort_exports = export_onnx_variant(work, run, env, texts, ("nbits",) if smoke else ("rowwise", "nbits",
                                                                                              "integer"))
    print(f"ORT baseline export: {ort_exports}", flush=True)
    servers = start_servers(work, run, onnx, env, names, smoke=smoke)
    results: dict[str, Any] = {"settings": s, "run": run, "inputs": {"split": split, "n": len(texts)},
                               "ort_exports": ort_exports,
                               "nnforge_health": servers["nnforge"]["health"], "loads": []}
    try:
        order = list(names)
        for rnd in range(s["rounds"]):
            for conc in s["concurrency"]:
                for name in order:
                    res = load_test(servers[name]["url"], texts, token=caller if name == "nnforge" else None,
                                    clients=conc, seconds=s["seconds"])
                    results["loads"].append({"round": rnd, "server": name, **res.to_dict()})
                    print(f"round {rnd} c={conc:2d} {name:20s} {res.rps:7.1f}/s p50 {res.p50_ms:6.1f} "
                          f"p99 {res.p99_ms:6.1f} errors {res.errors}", flush=True)
            order = order[1:] + order[:1]
        soak = load_test(servers["nnforge"]["url"], texts, token=caller, clients=16, seconds=s["soak_seconds"],
                         keep_replies=True)
        probe = texts[:s["browser_inputs"]]
        served = server_labels(servers["nnforge"]["url"], probe, caller, reviewer)
    finally:
        stop_servers(servers)
    results["browser"] = None if smoke else browser_agreement(work, run, env, probe, served)
    if results["browser"] is not None:
        print(f"browser: {results['browser']['same_label']} of {len(probe)} labels as the server's", flush=True)
    lost = lost_records(work, run, soak.replies)
    results["soak"] = {**soak.to_dict(), "lost_ledger_records": lost}
    print(f"soak: {soak.ok} answered, errors {soak.errors}, lost ledger records {lost}", flush=True)

    top = max(s["concurrency"])

    def rps(name: str, conc: int) -> list[float]:
        return [x["rps"] for x in results["loads"] if x["server"] == name and x["clients"] == conc]

    def p99(name: str, conc: int) -> float:
        return statistics.median(x["p99_ms"] for x in results["loads"] if x["server"] == name and x["clients"] == conc)

    per = {name: {f"c{c}": {"rps": statistics.median(rps(name, c)), "p99_ms": p99(name, c),
                            "p50_ms": statistics.median(x["p50_ms"] for x in results["loads"]
                                                        if x["server"] == name and x["clients"] == c)}
                  for c in s["concurrency"]} for name in names}
    results["per_server"] = per
    baselines = [n for n in names if n != "nnforge"]
    best = max(baselines, key=lambda n: statistics.median(rps(n, top)))
    ratio, ci = ratio_with_ci(rps("nnforge", top), rps(best, top))
    summary = {
        "nnforge_rps_16": per["nnforge"][f"c{top}"]["rps"], "best_baseline_rps_16": per[best][f"c{top}"]["rps"],
        "best_baseline": best, "throughput_ratio_16": round(ratio, 3), "throughput_ratio_16_ci": [round(ci[0], 3), round(ci[1], 3)],
        "nnforge_p99_ms_16": per["nnforge"][f"c{top}"]["p99_ms"], "best_baseline_p99_ms_16": per[best][f"c{top}"]["p99_ms"],
        **{f"{n}_rps_16": per[n][f"c{top}"]["rps"] if n in per else None for n in SERVERS if n != "nnforge"},
        "nnforge_backend": servers["nnforge"]["health"].get("backend"),
        "errors": sum(sum(x["errors"].values()) for x in results["loads"] if x["server"] == "nnforge")
        + sum(soak.errors.values()),
        "lost_ledger_records": lost,
        "browser_agreement": results["browser"]["agreement"] if results["browser"] else None,
    }
    for c in s["concurrency"]:
        b = max(baselines, key=lambda n, c=c: statistics.median(rps(n, c)))
        summary[f"nnforge_beats_best_baseline_c{c}"] = per["nnforge"][f"c{c}"]["rps"] > per[b][f"c{c}"]["rps"]
    peers = {"fastapi_torch_fp32": "FastAPI sync endpoint (thread pool) + PyTorch predict_proba per request, "
                                   "torch default threads",
             "fastapi_torch_int8": "the same on the run's int8 variant (nnforge's quantized layers in PyTorch)",
             "fastapi_ort": "FastAPI sync endpoint + one onnxruntime InferenceSession (default SessionOptions, "
                            "CPUExecutionProvider) on `nnforge export RUN --variant int8 --format onnx "
                            f"--int8-matmul {ort_exports['chosen']}`, the fastest of rowwise/nbits/integer in ORT"}
    write_results("serve", "quickstart", args=args, results=results, summary=summary, peers=peers,
                  no_ci={"nnforge_rps_16": "a median; the ratio carries the interval"},
                  packages=("fastapi", "uvicorn", "onnxruntime", "httpx"))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
