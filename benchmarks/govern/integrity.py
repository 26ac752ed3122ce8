"""Benchmark: does every load path of a run refuse an artifact whose bytes changed, and is every decision made by
an authenticated user?

    python benchmarks/govern/integrity.py           # full: 10 flips per load path; 200 decisions, 100 forgeries
    python benchmarks/govern/integrity.py --quick   # 3 flips per load path; 200 decisions, 100 forgeries
    python benchmarks/govern/integrity.py --smoke   # 1 flip per load path; 10 decisions, 8 forgeries; writes nothing

1. A tiny run is built once (a digits MLP trained for 3 steps, then int8: two weights files recorded in the
   ledger with ``artifact.written``), with an admin user for the dashboard.
2. For each load path — ``nnforge predict``, ``embed``, ``evaluate``, ``docs``, ``load_run().predict``, the
   dashboard's run page and its runs list — each trial copies the pristine workspace, flips 1 to 100 bytes (same
   size, each byte XOR a non-zero value) at random offsets of one weights file, and calls the path. *Refused*
   means: the CLI exits 2 and its message names the file; the Python call raises ``IntegrityError`` naming it; the
   dashboard marks the run altered and names the file. Each path is first called on the pristine copy: it must
   not be refused there (the digits model is not a text classifier, so predict and embed then fail for that
   reason, exit 2 without an integrity message: recorded as ``control_error``), so a refusal is the modification's.
   The dashboard also gets an edited metrics.json: the edited value must appear nowhere on its pages.
3. Roles (``nnforge.govern.users.simulate_review``): review decisions through users' tokens, then forged or missing
   credentials (wrong token, another user's token for a role they lack, an expired login, no token).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, mode, pick, write_results  # noqa: E402

RECIPE = """
name: tiny-digits
seed: 0
model: {architecture: digits-mlp}
data: {dataset: digits}
steps:
  - train: {batch_size: 64, train: {max_steps: 3, eval_every: 3}}
  - quantize: {scheme: int8}
metadata: {intended_purpose: integrity benchmark, owner: nnforge benchmarks}
"""
WEIGHTS = ("model.safetensors", "model-int8.safetensors")
PATHS = ("cli predict", "cli embed", "cli evaluate", "cli docs", "python load_run().predict", "dashboard run page",
         "dashboard runs page")


def build(root: Path) -> tuple[Path, str, str]:
    """The pristine workspace (runs/ and .nnforge/), its run id, and an admin's dashboard token."""
    import yaml

    from nnforge.govern.users import UserStore
    from nnforge.ledger import Ledger
    from nnforge.recipes import run_recipe
    from nnforge.recipes.schema import parse_recipe

    ws = root / "pristine"
    ws.mkdir()
    ledger = ws / ".nnforge" / "ledger.db"
    with Ledger.open(ledger, actor="bench") as led:
        result = run_recipe(parse_recipe(yaml.safe_load(RECIPE)), runs_dir=ws / "runs", ledger=led)
        token = UserStore.for_ledger(ledger).add("root", "admin", by=None, ledger=led)[1]
    return ws, result.run_id, token


def trial_copy(ws: Path, dst: Path, run_id: str) -> Path:
    """A copy of the workspace whose run points at the copy's ledger; returns the run folder."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(ws, dst)
    run_dir = dst / "runs" / run_id
    config = json.loads((run_dir / "config.json").read_text())
    config["ledger"] = str(dst / ".nnforge" / "ledger.db")
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def flip(path: Path, rng: random.Random) -> int:
    data = bytearray(path.read_bytes())
    n = rng.randint(1, 100)
    for pos in rng.sample(range(len(data)), n):
        data[pos] ^= rng.randint(1, 255)
    path.write_bytes(bytes(data))
    return n


def cli(argv: list[str]) -> tuple[int, str]:
    from nnforge.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


def call(path: str, run_dir: Path, token: str) -> dict[str, Any]:
    """Use the run through ``path``; ``refused``: refused for integrity, ``names``: the message's text."""
    from nnforge.errors import IntegrityError, NnforgeError

    if path.startswith("cli "):
        argv = {"cli predict": ["predict", str(run_dir), "--text", "x"], "cli embed": ["embed", str(run_dir), "--text", "x"],
                "cli evaluate": ["evaluate", str(run_dir), "--suite", "quickstart"], "cli docs": ["docs", str(run_dir)]}[path]
        rc, err = cli(argv)
        return {"rc": rc, "refused": rc == 2 and "--allow-modified" in err, "message": err}
    if path.startswith("python"):
        import nnforge

        try:
            nnforge.load_run(run_dir).predict(["x"])
        except IntegrityError as exc:
            return {"rc": 2, "refused": True, "message": str(exc)}
        except NnforgeError as exc:
            return {"rc": exc.exit_code, "refused": False, "message": str(exc)}
        return {"rc": 0, "refused": False, "message": ""}
    return dashboard(path, run_dir, token)


def dashboard(path: str, run_dir: Path, token: str) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from nnforge.govern.dashboard import create_app

    app = create_app(run_dir.parent.parent / ".nnforge" / "ledger.db", run_dir.parent)
    client = TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)
    login = client.post("/login", data={"username": "root", "token": token}, headers={"Origin": "http://127.0.0.1"})
    if login.status_code != 303:
        return {"rc": login.status_code, "refused": False, "message": "login failed"}
    if path == "dashboard run page":
        text = client.get(f"/runs/{run_dir.name}").text
        return {"rc": 200, "refused": 'id="altered"' in text, "message": text}
    text = client.get("/").text
    row = text.split(run_dir.name, 1)[-1].split("</tr>", 1)[0]
    return {"rc": 200, "refused": '<span class="bad">altered</span>' in row, "message": text}


def load_paths(ws: Path, run_id: str, token: str, trials: int, tmp: Path) -> dict[str, Any]:
    rng = random.Random(0)
    out: dict[str, Any] = {}
    for path in PATHS:
        t0 = time.perf_counter()
        control = call(path, trial_copy(ws, tmp / "trial", run_id), token)
        rows = []
        for t in range(trials):
            run_dir = trial_copy(ws, tmp / "trial", run_id)
            target = WEIGHTS[t % len(WEIGHTS)]
            flipped = flip(run_dir / target, rng)
            got = call(path, run_dir, token)
            rows.append({"file": target, "bytes_flipped": flipped, "rc": got["rc"], "refused": got["refused"],
                         "names_file": target in got["message"]})
        out[path] = {"tried": trials, "refused_naming_file": sum(r["refused"] and r["names_file"] for r in rows),
                     "control_refused": control["refused"], "control_rc": control["rc"],
                     "control_error": "" if control["rc"] in (0, 200) else control["message"][:200], "trials": rows,
                     "seconds": round(time.perf_counter() - t0, 2)}
    return out


def edited_metrics_hidden(ws: Path, run_id: str, token: str, tmp: Path) -> bool:
    """An edited metrics.json (a figure set to 0.987654) shows on no dashboard page; the run shows as altered."""
    run_dir = trial_copy(ws, tmp / "trial", run_id)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    key = next(k for k, v in metrics.items() if isinstance(v, float))
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, key: 0.987654}))
    pages = [dashboard(p, run_dir, token) for p in ("dashboard run page", "dashboard runs page")]
    return all(p["refused"] for p in pages) and not any("0.98765" in p["message"] for p in pages)


def roles(decisions: int, forged: int, tmp: Path) -> dict[str, Any]:
    try:
        from nnforge.govern.users import simulate_review
    except ImportError as exc:
        return {"error": f"nnforge.govern.users.simulate_review is not available: {exc}"}
    t0 = time.perf_counter()
    figure = simulate_review(tmp / "roles", decisions=decisions, forged=forged)
    return {**figure, "seconds": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    trials = pick(args, smoke=1, quick=3, full=10)
    decisions, forged = pick(args, smoke=10, quick=200, full=200), pick(args, smoke=8, quick=100, full=100)
    if mode(args) == "smoke":  # throw-away users: fast hashing, the same checks (quick and full: the real cost)
        os.environ.setdefault("NNFORGE_SCRYPT_N", "1024")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        ws, run_id, token = build(tmp)
        build_s = round(time.perf_counter() - t0, 2)
        paths = load_paths(ws, run_id, token, trials, tmp)
        hidden = edited_metrics_hidden(ws, run_id, token, tmp)
        figure = roles(decisions, forged, tmp)
    refusing = [p for p, r in paths.items() if r["refused_naming_file"] == r["tried"] and not r["control_refused"]]
    summary = {"load_paths_tried": len(paths), "load_paths_refusing_modified": len(refusing),
               "flips_tried": sum(r["tried"] for r in paths.values()),
               "flips_refused_naming_file": sum(r["refused_naming_file"] for r in paths.values()),
               "dashboard_hides_edited_metrics": hidden,
               "decisions": figure.get("decisions"),
               "decisions_with_authenticated_user": figure.get("decisions_with_authenticated_user"),
               "forged_credentials_tried": figure.get("forged_credentials_tried"),
               "forged_credentials_refused": figure.get("forged_credentials_refused")}
    results = {"build_seconds": build_s, "paths": paths, "roles": figure, "trials_per_path": trials}
    print(json.dumps(summary, indent=1))
    failed = [p for p in PATHS if p not in refusing]
    if failed or not hidden:
        raise SystemExit(f"integrity: not every load path refused every modified artifact: {failed}")
    if mode(args) == "smoke" and "error" in figure:
        raise SystemExit(figure["error"])
    path = write_results("govern", "integrity", args=args, results=results, summary=summary)
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
