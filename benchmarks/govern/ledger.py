"""Benchmark: is the ledger tamper-evident, and does it survive concurrent writers and SIGKILL?

    python benchmarks/govern/ledger.py           # full: 1,000 tamper trials, 4 x 2,500 appends, 100 kills
    python benchmarks/govern/ledger.py --quick   # 100 trials, 4 x 100 appends, 5 kills
    python benchmarks/govern/ledger.py --smoke   # 10 trials, 2 x 10 appends, 2 kills; writes nothing

1. Tamper fuzz: a template ledger of 300 events (299 notes + a ``ledger.signed`` event signing #299).
   Each trial copies it and makes one random modification with sqlite3, as an attacker with write
   access would: flip one bit of one byte (kept ASCII) of a stored event body, delete one event that
   is not the newest, or swap the stored rows of two events. A trial counts as *detected and named*
   when ``verify()`` fails and its ``broken_seq`` is the lowest sequence number the modification
   touched (the flipped event, the deleted event's position, the lower of the swapped pair): that is
   the first event whose stored row no longer links correctly.
2. Rewrite/truncation: delete the newest 2..50 events, or change one event and recompute every hash
   after it. ``verify()`` alone passes (recorded); detection means ``verify(head=stored head)`` fails
   *and* ``verify_signed_head`` (signature over #299, Ed25519) fails.
3. Concurrency: 4 processes append at once to one ledger; the chain must verify with every
   ``(process, i)`` present exactly once.
4. SIGKILL: a child appends in a loop and acknowledges each committed append through a pipe; the
   parent kills it with SIGKILL after a random 5-60 ms. The ledger must verify, and the run's events
   must be exactly the acknowledged ones plus at most one (committed, not yet acknowledged).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, pick, write_results  # noqa: E402
from nnforge.ledger import (  # noqa: E402
    GENESIS,
    Ledger,
    canonical_json,
    generate_keypair,
    sign_head,
    verify_signed_head,
)

N_TEMPLATE = 299


def build_template(tmp: Path) -> tuple[Path, Any, Path, str]:
    path = tmp / "template.db"
    led = Ledger.open(path, actor="bench")
    rng = random.Random(0)
    for i in range(N_TEMPLATE):
        led.append("note", {"i": i, "text": f"event {i} " + "x" * rng.randint(0, 80)}, run=f"r{i % 7}")
    priv, pub = generate_keypair(tmp / "keys")
    signed = sign_head(led, priv)
    stored_head = led.head()
    led.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path, signed, pub, stored_head


def fresh_copy(template: Path, dst: Path) -> Path:
    for suffix in ("-wal", "-shm"):
        Path(str(dst) + suffix).unlink(missing_ok=True)
    shutil.copyfile(template, dst)
    return dst


def tamper(db: Path, rng: random.Random) -> tuple[str, int]:
    """One random modification; returns (kind, the lowest seq it touched)."""
    conn = sqlite3.connect(db)
    n = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
    kind = rng.choice(["flip", "delete", "swap"])
    if kind == "flip":
        seq = rng.randint(1, n)
        body = conn.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()[0].encode("utf-8")
        ascii_pos = [i for i, b in enumerate(body) if b < 128]
        pos = rng.choice(ascii_pos)
        flipped = bytearray(body)
        flipped[pos] ^= 1 << rng.randint(0, 6)
        conn.execute("UPDATE events SET body = ? WHERE seq = ?", (flipped.decode("utf-8"), seq))
        touched = seq
    elif kind == "delete":
        seq = rng.randint(1, n - 1)
        conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
        touched = seq
    else:
        a, b = sorted(rng.sample(range(1, n + 1), 2))
        ra = conn.execute("SELECT hash, body FROM events WHERE seq = ?", (a,)).fetchone()
        rb = conn.execute("SELECT hash, body FROM events WHERE seq = ?", (b,)).fetchone()
        conn.execute("UPDATE events SET hash = ?, body = ? WHERE seq = ?", (*rb, a))
        conn.execute("UPDATE events SET hash = ?, body = ? WHERE seq = ?", (*ra, b))
        touched = a
    conn.commit()
    conn.close()
    return kind, touched


def rewrite_or_truncate(db: Path, rng: random.Random) -> str:
    conn = sqlite3.connect(db)
    n = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
    if rng.random() < 0.5:
        conn.execute("DELETE FROM events WHERE seq > ?", (n - rng.randint(2, 50),))
        kind = "truncate"
    else:
        start = rng.randint(1, N_TEMPLATE)
        prev = GENESIS
        for seq, hash_, body in conn.execute("SELECT seq, hash, body FROM events ORDER BY seq").fetchall():
            if seq >= start:
                doc = json.loads(body)
                doc["prev"] = prev
                if seq == start:
                    doc["data"]["forged"] = True
                body = canonical_json(doc)
                hash_ = hashlib.sha256(body.encode("utf-8")).hexdigest()
                conn.execute("UPDATE events SET hash = ?, body = ? WHERE seq = ?", (hash_, body, seq))
            prev = hash_
        kind = "rewrite"
    conn.commit()
    conn.close()
    return kind


def fuzz(tmp: Path, trials: int, rewrite_trials: int) -> dict[str, Any]:
    template, signed, pub, stored_head = build_template(tmp)
    rng = random.Random(1)
    per_kind: dict[str, dict[str, int]] = {}
    failures = []
    for t in range(trials):
        db = fresh_copy(template, tmp / "trial.db")
        kind, touched = tamper(db, rng)
        led = Ledger.open(db)
        res = led.verify()
        led.close()
        k = per_kind.setdefault(kind, {"trials": 0, "detected": 0, "named": 0})
        k["trials"] += 1
        k["detected"] += not res.ok
        k["named"] += (not res.ok) and res.broken_seq == touched
        if res.ok or res.broken_seq != touched:
            failures.append({"trial": t, "kind": kind, "touched": touched, "result": res.to_dict()})
    rw: dict[str, dict[str, int]] = {}
    for _ in range(rewrite_trials):
        db = fresh_copy(template, tmp / "trial.db")
        kind = rewrite_or_truncate(db, rng)
        led = Ledger.open(db)
        k = rw.setdefault(kind, {"trials": 0, "plain_verify_passes": 0, "stored_head_detected": 0,
                                 "signed_head_detected": 0})
        k["trials"] += 1
        k["plain_verify_passes"] += led.verify().ok
        k["stored_head_detected"] += not led.verify(head=stored_head).ok
        k["signed_head_detected"] += not verify_signed_head(led, signed, pub).ok
        led.close()
    return {"template_events": N_TEMPLATE + 1, "tamper": per_kind, "tamper_failures": failures[:20],
            "rewrite": rw}


def _appender(path: str, proc: int, n: int) -> None:
    led = Ledger.open(path, actor=f"p{proc}")
    for i in range(n):
        led.append("note", {"proc": proc, "i": i})
    led.close()


def concurrency(tmp: Path, procs: int, per_proc: int) -> dict[str, Any]:
    path = str(tmp / "concurrent.db")
    Ledger.open(path).close()
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    workers = [ctx.Process(target=_appender, args=(path, p, per_proc)) for p in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t0
    led = Ledger.open(path)
    res = led.verify()
    pairs = [(e.data["proc"], e.data["i"]) for e in led.events()]
    led.close()
    expected = {(p, i) for p in range(procs) for i in range(per_proc)}
    return {"processes": procs, "per_process": per_proc, "expected": procs * per_proc, "found": len(pairs),
            "all_present_once": len(pairs) == len(set(pairs)) and set(pairs) == expected,
            "chain_ok": res.ok, "exit_codes": [w.exitcode for w in workers], "seconds": round(seconds, 2),
            "appends_per_s": round(len(pairs) / seconds, 1)}


def _killable(path: str, run: int, conn: Any) -> None:
    led = Ledger.open(path, actor="victim")
    conn.send("ready")
    i = 0
    while True:
        led.append("note", {"i": i}, run=f"kill{run}")
        conn.send(i)
        i += 1


def sigkill(tmp: Path, runs: int) -> dict[str, Any]:
    path = str(tmp / "killed.db")
    Ledger.open(path).close()
    ctx = mp.get_context("fork")
    rng = random.Random(2)
    details = []
    for r in range(runs):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_killable, args=(path, r, child))
        proc.start()
        child.close()
        assert parent.recv() == "ready"
        time.sleep(rng.uniform(0.005, 0.06))
        os.kill(proc.pid or 0, signal.SIGKILL)
        proc.join()
        acked = 0
        try:
            while parent.poll():
                msg = parent.recv()
                if isinstance(msg, int):
                    acked = msg + 1
        except EOFError:
            pass
        parent.close()
        led = Ledger.open(path)
        res = led.verify()
        got = [e.data["i"] for e in led.events(run=f"kill{r}")]
        led.close()
        consistent = got == list(range(len(got))) and acked <= len(got) <= acked + 1
        details.append({"run": r, "acked": acked, "stored": len(got), "chain_ok": res.ok,
                        "ok": res.ok and consistent, "exit": proc.exitcode})
    return {"runs": runs, "verified": sum(d["ok"] for d in details),
            "in_flight_committed_unacked": sum(d["stored"] - d["acked"] for d in details),
            "appends_before_kill_median": sorted(d["acked"] for d in details)[len(details) // 2],
            "details": details}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    trials, rewrites, per_proc, kills = pick(args, full=(1000, 100, 2500, 100), quick=(100, 20, 100, 5),
                                             smoke=(10, 4, 10, 2))
    procs = pick(args, full=4, quick=4, smoke=2)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nnforge-ledger-bench-") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        results["fuzz"] = fuzz(tmp, trials, rewrites)
        results["fuzz_seconds"] = round(time.perf_counter() - t0, 1)
        print("fuzz", json.dumps({k: v for k, v in results["fuzz"].items() if k != "tamper_failures"}), flush=True)
        results["concurrency"] = concurrency(tmp, procs, per_proc)
        print("concurrency", json.dumps(results["concurrency"]), flush=True)
        t0 = time.perf_counter()
        results["sigkill"] = sigkill(tmp, kills)
        results["sigkill_seconds"] = round(time.perf_counter() - t0, 1)
        print("sigkill", {k: v for k, v in results["sigkill"].items() if k != "details"}, flush=True)
    fz, rw = results["fuzz"]["tamper"], results["fuzz"]["rewrite"]
    summary = {
        "tamper_trials": sum(k["trials"] for k in fz.values()),
        "tamper_detected": sum(k["detected"] for k in fz.values()),
        "tamper_named": sum(k["named"] for k in fz.values()),
        "rewrite_trials": sum(k["trials"] for k in rw.values()),
        "rewrite_detected": sum(min(k["stored_head_detected"], k["signed_head_detected"]) for k in rw.values()),
        "rewrite_passing_plain_verify": sum(k["plain_verify_passes"] for k in rw.values()),
        "concurrent_processes": procs,
        "concurrent_events_expected": results["concurrency"]["expected"],
        "concurrent_events_found": results["concurrency"]["found"] if results["concurrency"]["chain_ok"]
        and results["concurrency"]["all_present_once"] else 0,
        "sigkill_runs": kills,
        "sigkill_runs_verified": results["sigkill"]["verified"],
    }
    path = write_results("govern", "ledger", args=args, results=results, summary=summary,
                         packages=("cryptography",))
    print(json.dumps(summary, indent=1))
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
