"""The benchmark harness's results side: provenance, a schema checked on write, atomic writes, tagged files.

Every results file says where its figures came from (commit, dirty tree, script hash, command line), on
what machine, with which versions and peer configurations; every ratio in its ``summary`` carries a 95%
interval beside it (``<key>_ci``). :func:`write_results` refuses a file that does not, before writing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import json
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from nnforge.errors import ConfigError
from nnforge.hardware._machine import machine_facts

__all__ = ["MODES", "package_versions", "provenance", "results_path", "validate_results", "write_results"]

MODES = ("full", "quick", "smoke")
REQUIRED = ("mode", "benchmark", "date", "provenance", "machine", "versions", "peers", "results", "summary")
PROVENANCE_KEYS = ("commit", "dirty", "script_sha256", "argv")
MACHINE_KEYS = ("cpu", "cores", "threads", "l3_cache_mb", "load_average")
# a summary figure whose key ends so is a fraction in [0, 1] (accuracies and rates are never percentages)
FRACTION_SUFFIXES = ("_acc", "_accuracy", "_agree", "_agreement", "_auroc", "_fpr95", "_rate", "_fraction")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def provenance(script: str | os.PathLike[str], argv: list[str]) -> dict[str, Any]:
    """``{commit, dirty, script_sha256, argv}`` of a benchmark run.

    ``commit`` is ``git rev-parse HEAD`` of the repository holding ``script`` (None outside git);
    ``dirty`` is True when a tracked file differs from it (``git status --porcelain --untracked-files=no``),
    None outside git, with ``dirty_files`` naming the changed files (at most 50) when True; ``script_sha256``
    hashes the script's bytes; ``argv`` is the command line as given.
    """
    path = Path(script).resolve()
    where = path.parent
    commit = _git(["rev-parse", "HEAD"], where)
    status = _git(["status", "--porcelain", "--untracked-files=no"], where) if commit is not None else None
    out: dict[str, Any] = {
        "commit": commit.strip() if commit else None, "dirty": bool(status.strip()) if status is not None else None,
        "script_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "argv": [str(a) for a in argv]}
    if out["dirty"]:  # which files: another benchmark's fresh results file is not a code change
        out["dirty_files"] = sorted(line[3:] for line in status.splitlines() if line.strip())[:50]  # type: ignore[union-attr]
    return out


def _started(started: Mapping[str, Any] | None, script: str | os.PathLike[str], argv: list[str]) -> dict[str, Any]:
    now = provenance(script, argv)
    if started is None:
        return now
    out = dict(started)
    if started.get("commit") != now["commit"] or started.get("dirty") != now["dirty"]:
        # the tree moved while the run ran: the figures belong to the start commit; say so instead of hiding it
        out["commit_at_write"], out["dirty_at_write"] = now["commit"], now["dirty"]
    if started.get("script_sha256") != now["script_sha256"]:
        out["script_sha256_at_write"] = now["script_sha256"]
    return out


def package_versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of torch, nnforge, numpy and ``packages`` (None for a package not installed)."""
    out: dict[str, str | None] = {}
    for pkg in ("torch", "nnforge", "numpy", *packages):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def results_path(directory: str | os.PathLike[str], area: str, name: str, mode: str, tag: str | None = None) -> Path:
    """``<directory>/<area>_<name>[_<tag>][.quick].json``: a tagged or quick run never names the main file."""
    for label, value in (("area", area), ("name", name), ("tag", tag)):
        if value is not None and not _NAME.match(value):
            raise ConfigError(f"results {label} {value!r} must be letters, digits, '_', '.' or '-' (it names a file)")
    stem = f"{area}_{name}" + (f"_{tag}" if tag else "")
    return Path(directory) / f"{stem}{'.quick' if mode == 'quick' else ''}.json"


# --- the schema ---------------------------------------------------------------------------------------------------


def needs_ci(key: str) -> bool:
    """A summary key that names a ratio: ends in ``speedup`` or ``_ratio``, or contains ``speedup_``."""
    return not key.endswith("_ci") and (key.endswith(("speedup", "_ratio")) or "speedup_" in key)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_interval(path: str, value: float, ci: object) -> str | None:
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_is_number(x) for x in ci)):
        return f"summary.{path}_ci must be [lo, hi] (two numbers); got {ci!r}"
    lo, hi = float(ci[0]), float(ci[1])  # type: ignore[index]
    if not lo <= value <= hi:
        return f"summary.{path} = {value} lies outside its interval {path}_ci = [{lo}, {hi}]"
    return None


def _summary_problems(summary: Mapping[str, Any], no_ci: Mapping[str, str], prefix: str = "") -> list[str]:
    problems: list[str] = []
    for key, value in summary.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            problems += _summary_problems(value, no_ci, f"{path}.")
            continue
        if not _is_number(value):
            continue
        if needs_ci(key) and path not in no_ci:
            if f"{key}_ci" not in summary:
                problems.append(f"summary.{path} is a ratio without an interval: add {key}_ci [lo, hi] "
                                f"(nnforge.hardware.ratio_with_ci), or list it in no_ci with the reason")
            else:
                problem = _check_interval(path, float(value), summary[f"{key}_ci"])
                problems += [problem] if problem else []
        if key.endswith(FRACTION_SUFFIXES) and not 0 <= value <= 1:
            problems.append(f"summary.{path} = {value} must be a fraction in [0, 1] (accuracies and rates are "
                            f"never percentages)")
        if "percent" in key or key.endswith("_pct"):
            problems.append(f"summary.{path}: state it as a fraction in [0, 1] under a name without 'percent'")
    return problems


def _json_problems(value: Any, path: str) -> list[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path} = {value}: not valid JSON; use null for a figure that is undefined"]
    if isinstance(value, Mapping):
        bad = [f"{path or 'the document'}: key {k!r} is not a string" for k in value if not isinstance(k, str)]
        return bad + [p for k, v in value.items() for p in _json_problems(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _json_problems(v, f"{path}[{i}]")]
    if value is None or isinstance(value, (str, int, float, bool)):
        return []
    return [f"{path} is a {type(value).__name__}, which JSON cannot hold; convert it (.item(), .tolist(), str)"]


def validate_results(doc: Mapping[str, Any], *, no_ci: Mapping[str, str] | None = None) -> None:
    """Raise :class:`~nnforge.errors.ConfigError` listing every way ``doc`` breaks the results schema.

    Required keys (:data:`REQUIRED`), provenance and machine keys, ``mode`` in :data:`MODES`; every numeric
    summary ratio (:func:`needs_ci`) with ``<key>_ci`` = [lo, hi] around it unless ``no_ci`` (dotted key ->
    reason) exempts it; fractions in [0, 1]; only JSON values (no NaN, numpy scalars or objects).
    """
    problems = [f"missing top-level key {k!r}" for k in REQUIRED if k not in doc]
    if doc.get("mode") not in MODES:
        problems.append(f"mode must be one of {MODES}; got {doc.get('mode')!r}")
    for section, keys in (("provenance", PROVENANCE_KEYS), ("machine", MACHINE_KEYS)):
        block = doc.get(section)
        if isinstance(block, Mapping):
            problems += [f"{section} lacks {k!r}" for k in keys if k not in block]
        elif section in doc:
            problems.append(f"{section} must be an object")
    for section in ("summary", "peers"):
        if section in doc and not isinstance(doc[section], Mapping):
            problems.append(f"{section} must be an object (name -> value)")
    no_ci = dict(no_ci or {})
    problems += [f"no_ci[{k!r}] needs a reason" for k, why in no_ci.items() if not str(why).strip()]
    if isinstance(doc.get("summary"), Mapping):
        problems += _summary_problems(doc["summary"], no_ci)
    problems += _json_problems(doc, "")
    if problems:
        raise ConfigError(f"benchmark results {doc.get('benchmark', '?')!r} break the results schema:\n  - "
                          + "\n  - ".join(problems))


# --- writing --------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Numpy/torch scalars and arrays, tuples, paths and int keys as plain JSON values (as ``json.dump`` would
    write them); anything else unchanged, for :func:`validate_results` to refuse."""
    if isinstance(value, Mapping):
        return {(str(k) if isinstance(k, int) and not isinstance(k, bool) else k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays/scalars, torch tensors
        return _plain(value.tolist())
    return value


def write_results(directory: str | os.PathLike[str], area: str, name: str, *, mode: Literal["full", "quick", "smoke"],
                  results: Any, summary: Mapping[str, Any], script: str | os.PathLike[str], argv: list[str],
                  peers: Mapping[str, Any] | None = None, tag: str | None = None, packages: Iterable[str] = (),
                  extra: Mapping[str, Any] | None = None, no_ci: Mapping[str, str] | None = None,
                  machine: Mapping[str, Any] | None = None,
                  started: Mapping[str, Any] | None = None) -> Path | None:
    """Build, check and write one benchmark's results; the path written, or None in smoke mode.

    The file holds ``{mode, benchmark, date, provenance, machine, versions, peers, results, summary,
    **extra}`` (plus ``tag`` and ``no_ci`` where given) and is checked with :func:`validate_results`
    before anything is written; it is written to a temporary file and renamed, so a reader never sees half.

    Args:
        directory: where results live (``benchmarks/results``).
        area, name: the file is ``<area>_<name>.json`` (``.quick.json`` in quick mode).
        mode: ``"smoke"`` checks the document and writes nothing.
        script, argv: the benchmark script and its command line, for :func:`provenance`.
        peers: each peer's configuration (name -> settings), as measured.
        tag: a partial run (``--only``) writes ``<area>_<name>_<tag>.json`` and never the main file.
        packages: more packages whose versions to record.
        no_ci: summary ratios exempt from the interval rule, dotted key -> the reason (recorded in the file).
        machine: :func:`machine_facts` taken when the run started (its load average); taken now if None.
        started: :func:`provenance` taken when the run started (the commit and script it ran, even if the tree
            changed during a long run); taken now if None. Its script hash must match the script's now.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}; got {mode!r}")
    path = results_path(directory, area, name, mode, tag)
    doc: dict[str, Any] = {
        "mode": mode, "benchmark": f"{area}/{name}", "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "provenance": _started(started, script, argv), "machine": dict(machine if machine is not None else machine_facts()),
        "versions": package_versions(*packages), "peers": dict(peers or {}),
    }
    if tag:
        doc["tag"] = tag
    if no_ci:
        doc["no_ci"] = dict(no_ci)
    reserved = set(doc) | {"results", "summary"}
    clash = sorted(reserved & set(extra or {}))
    if clash:
        raise ConfigError(f"extra keys {clash} would overwrite the results file's own keys; rename them")
    doc.update({**(extra or {}), "results": results, "summary": summary})
    doc = _plain(doc)
    validate_results(doc, no_ci=no_ci)
    if mode == "smoke":
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
