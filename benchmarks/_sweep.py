"""Shared by the training benchmarks: learning-rate sweeps whose best lr is bracketed, resumable from a progress file.

A *run* is a dict with the variant's name under a key (``optimizer``, ``variant``), its ``lr``, a ``val_loss``
curve ``{step: loss or None}`` and ``finite``. :class:`LrSweep` runs each (name, lr) once, appends it to a JSONL
progress file (so an interrupted sweep resumes where it stopped), and :meth:`LrSweep.bracket` adds one lr beyond
the edge where a variant's best sits, round after round, until the best is strictly inside the lrs tried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from _common import spread


def final_loss(run: dict[str, Any]) -> float:
    """The last evaluated val loss of a run (inf for a run that diverged)."""
    last = max(run["val_loss"], key=int)
    return run["val_loss"][last] if run["finite"] else float("inf")


def next_lr(runs: list[dict[str, Any]]) -> float | None:
    """One more lr beyond the edge where the best of these runs sits, or None when the best is strictly inside."""
    lrs = sorted(r["lr"] for r in runs)
    best = min(runs, key=final_loss)["lr"]
    if len(lrs) < 2:
        return None
    if best == lrs[0]:
        return float(f"{lrs[0] * lrs[0] / lrs[1]:.6g}")  # 6 digits: 1.25e-3, not 0.0012500000000000002
    if best == lrs[-1]:
        return float(f"{lrs[-1] * lrs[-1] / lrs[-2]:.6g}")
    return None


def best_lr_inside(runs: list[dict[str, Any]]) -> bool:
    """The best lr lies strictly between the smallest and the largest tried."""
    lrs = sorted(r["lr"] for r in runs)
    return lrs[0] < min(runs, key=final_loss)["lr"] < lrs[-1]


def timed_callbacks(optimizer: Any) -> tuple[list[Any], list[float]]:
    """Callbacks that time each training step (evaluation excluded) and refresh Sophia's Hessian."""
    from nnforge.train import Event, hessian_refresh, on

    step_times: list[float] = []
    marks: dict[str, float] = {}
    callbacks: list[Any] = [hessian_refresh(optimizer)] if hasattr(optimizer, "update_hessian") else []
    callbacks += [on(Event.STEP_START, lambda s: marks.__setitem__("t", time.perf_counter())),
                  on(Event.STEP_END, lambda s: step_times.append(time.perf_counter() - marks["t"]))]
    return callbacks, step_times


def timing(step_times: list[float], curve: Mapping[str, float | None]) -> dict[str, Any]:
    """Training seconds in total and at each evaluated step, median s/step, and whether the curve is finite."""
    seconds_at, total = {}, 0.0
    for i, t in enumerate(step_times, start=1):
        total += t
        if str(i) in curve:
            seconds_at[str(i)] = total
    finite = all(v is not None for v in curve.values())
    return {"train_seconds": total, "seconds_at": seconds_at, "s_per_step": spread(step_times)["median"],
            "finite": finite}


class LrSweep:
    """Runs (name, lr) pairs once each through ``run_fn``, reusing finished runs from the progress file.

    ``match`` are the settings a progress line must carry to be reused (steps, validation batches …); ``key`` is
    the field of a run that holds its name. ``progress=None`` keeps nothing (smoke runs).
    """

    def __init__(self, run_fn: Callable[[str, float], dict[str, Any]], progress: Path | None,
                 match: Mapping[str, Any], key: str = "variant") -> None:
        self.run_fn, self.progress, self.match, self.key = run_fn, progress, dict(match), key
        self.done: dict[str, dict[str, Any]] = {}
        if progress is not None and progress.exists():
            for line in progress.read_text(encoding="utf-8").splitlines():
                doc = json.loads(line)
                if all(doc.get(k) == v for k, v in self.match.items()):
                    self.done[f"{doc['run'][key]}@{doc['run']['lr']:g}"] = doc["run"]
        self.resumed = len(self.done)  # runs a previous invocation finished
        self.runs: dict[str, list[dict[str, Any]]] = {}

    def run(self, name: str, lr: float) -> dict[str, Any]:
        key = f"{name}@{lr:g}"
        if key not in self.done:
            self.done[key] = self.run_fn(name, lr)
            if self.progress is not None:
                with open(self.progress, "a", encoding="utf-8") as f:
                    f.write(json.dumps({**self.match, "run": self.done[key]}) + "\n")
            r = self.done[key]
            print(f"{name:22s} lr {lr:<8g} final val {final_loss(r):.4f} {r['s_per_step'] * 1e3:.1f} ms/step", flush=True)
        self.runs.setdefault(name, []).append(self.done[key])
        return self.done[key]

    def grid(self, grids: Mapping[str, list[float]]) -> None:
        """Every variant's starting lrs, interleaved: lr i of every variant, then lr i + 1 (noise spreads evenly)."""
        for i in range(max((len(g) for g in grids.values()), default=0)):
            for name, lrs in grids.items():
                if i < len(lrs):
                    self.run(name, lrs[i])

    def bracket(self, names: list[str], max_extensions: int) -> None:
        """Add one lr beyond the edge for every variant whose best is at an edge, round after round."""
        for _ in range(max_extensions):
            todo = {n: lr for n in names if (lr := next_lr(self.runs[n])) is not None}
            if not todo:
                return
            for name, lr in todo.items():  # interleaved: one new point of each variant per round
                self.run(name, lr)

    def best(self, name: str) -> dict[str, Any]:
        """The variant's run with the lowest final val loss."""
        return min(self.runs[name], key=final_loss)
