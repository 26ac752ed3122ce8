"""Shared by the benchmark scripts: the mode flags, and writing results through the harness in nnforge.hardware.

Every script calls :func:`add_mode_args` on its parser and :func:`write_results` at the end:

* full mode (no flag) writes ``benchmarks/results/<area>_<name>.json`` (committed);
* ``--quick`` writes ``<area>_<name>.quick.json`` (ignored by git), so a quick run never overwrites a full one;
* ``--smoke`` runs tiny shapes in seconds, checks the results against the schema and writes nothing
  (``make test`` runs every script so);
* ``--only A,B`` runs a part of the benchmark and writes ``<area>_<name>_<tag>.json``, never the main file
  (the tag is ``--tag``, or ``only-A-B`` when not given).

The file records provenance (commit, dirty tree, script sha256, argv), the machine (L3 size, threads, load
average when the run started; the commit and script hash too, so a tree that moves during a long run is
recorded as such), versions, peers' configurations; every ratio in the summary needs ``<key>_ci``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from nnforge.hardware import ratio_with_ci, spread  # noqa: F401  (re-exported for the scripts)

RESULTS = Path(__file__).resolve().parent / "results"
T = TypeVar("T")

_START_LOAD: list[float] | None = None
_START_PROVENANCE: dict[str, Any] | None = None


def add_mode_args(ap: argparse.ArgumentParser, *, only: str | None = None) -> None:
    """``--smoke`` / ``--quick`` (full mode without either), ``--tag``, and ``--only`` where ``only`` describes
    what it selects (e.g. ``"optimizers to run, comma-separated"``); notes the load average at the start."""
    global _START_LOAD, _START_PROVENANCE
    from nnforge.hardware import provenance

    try:
        _START_LOAD = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        _START_LOAD = None
    # the commit and script the run starts from: a long run must not credit its figures to a later commit
    _START_PROVENANCE = provenance(_script(), list(sys.argv))
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="tiny shapes, seconds; check the results, write nothing")
    group.add_argument("--quick", action="store_true", help="a small slice (about a minute); writes .quick.json")
    if only is not None:
        ap.add_argument("--only", metavar="A,B", type=lambda s: [x for x in s.split(",") if x],
                        help=f"run only these ({only}); writes a tagged file, never the main one")
    ap.add_argument("--tag", help="write <area>_<name>_<tag>.json instead of the main file")


def mode(args: argparse.Namespace) -> str:
    """``"smoke"``, ``"quick"`` or ``"full"``."""
    return "smoke" if getattr(args, "smoke", False) else "quick" if getattr(args, "quick", False) else "full"


def pick(args: argparse.Namespace, *, full: T, quick: T, smoke: T) -> T:
    """The setting for this run's mode: ``steps = pick(args, full=1200, quick=100, smoke=5)``."""
    return {"full": full, "quick": quick, "smoke": smoke}[mode(args)]


def tag(args: argparse.Namespace) -> str | None:
    """``--tag``, or ``only-<names>`` for an ``--only`` run without one (a partial run never writes the main file)."""
    if getattr(args, "tag", None):
        return str(args.tag)
    only = getattr(args, "only", None)
    if only:
        return "only-" + "-".join(re.sub(r"[^A-Za-z0-9.]+", "", x) for x in only)[:60]
    return None


def after_first(series: Iterable[list[float]]) -> list[float]:
    """The values of every series (one per seed) without its first (round 1 of a federation starts the workers);
    all values when the series have only one each."""
    series = list(series)
    return [v for s in series for v in s[1:]] or [v for s in series for v in s]


def _script() -> Path:
    main = sys.modules.get("__main__")
    return Path(getattr(main, "__file__", None) or sys.argv[0]).resolve()


def _machine() -> dict[str, Any]:
    from nnforge.hardware import machine_facts

    facts = machine_facts()
    if _START_LOAD is not None:
        facts["load_average_end"], facts["load_average"] = facts["load_average"], _START_LOAD
    return facts


def write_results(area: str, name: str, *, args: argparse.Namespace, results: Any, summary: Mapping[str, Any],
                  peers: Mapping[str, Any] | None = None, no_ci: Mapping[str, str] | None = None,
                  packages: Iterable[str] = (), extra: Mapping[str, Any] | None = None) -> Path | None:
    """Check and write this script's results (:func:`nnforge.hardware.write_results`); None in smoke mode.

    ``args`` are the parsed flags of :func:`add_mode_args`: the mode and the tag come from them.
    """
    from nnforge.hardware import write_results as _write

    path = _write(RESULTS, area, name, mode=mode(args), results=results, summary=summary,  # type: ignore[arg-type]
                  script=_script(), argv=list(sys.argv), peers=peers, tag=tag(args), packages=tuple(packages),
                  extra=extra, no_ci=no_ci, machine=_machine(), started=_START_PROVENANCE)
    if path is None:
        print(f"smoke run of {area}/{name}: results match the schema; nothing written")
    return path


def load_script(area: str, name: str) -> Any:
    """``benchmarks/<area>/<name>.py`` as a module (another benchmark's training recipe and batches, reused)."""
    import importlib.util

    path = Path(__file__).resolve().parent / area / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{area}_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

