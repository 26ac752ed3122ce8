"""Shared by the benchmark scripts: machine facts, versions, and writing results JSON atomically.

Full-mode results go to ``benchmarks/results/<area>_<name>.json`` (committed); quick-mode results to
``<area>_<name>.quick.json`` (ignored by git), so a quick run never overwrites a full one.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def versions(*packages: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("torch", "nnforge", "numpy", *packages):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def spread(samples: list[float]) -> dict[str, float]:
    """Median, min, max and interquartile range of repeated measurements."""
    s = sorted(samples)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0], s[0], s[0]]
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "iqr": q[2] - q[0], "n": len(s)}


def write_results(area: str, name: str, *, quick: bool, results: Any, summary: dict[str, Any],
                  packages: tuple[str, ...] = (), extra: dict[str, Any] | None = None) -> Path:
    """Write the results JSON (mode, machine, versions, date, results, summary) atomically."""
    from nnforge.hardware import machine_facts

    doc = {"mode": "quick" if quick else "full", "benchmark": f"{area}/{name}",
           "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "machine": machine_facts(),
           "versions": versions(*packages), **(extra or {}), "results": results, "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{area}_{name}{'.quick' if quick else ''}.json"
    fd, tmp = tempfile.mkstemp(dir=RESULTS, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path
