"""The run folder's schema: the one place that reads and writes a run's files.

A run folder ``runs/<run-id>/`` holds::

    config.json      run_id, created, ended, recipe, recipe_source, environment, ledger, label_names, status
                     ("running" | "finished" | "failed" | "interrupted"), folder, host, pid, pid_start (the
                     process that runs it), variants {name: weights file}, final_variant, artifacts {name: file}
    metrics.json     {figure: value}, rewritten after every step (nothing is lost when a later step fails)
    sections.json    report sections contributed by steps and suites
    report.html, docs/, model-<variant>.safetensors, suite-<name>[@<variant>].json, …

Recipes write through :func:`write_config` / :func:`update_config` / :func:`write_metrics` /
:func:`write_sections` (atomic: a temporary file and a rename, checked against the schema before writing);
the report, the generated documents, the promotion gate and the dashboard read through :func:`read_config`,
:func:`read_metrics` and :func:`read_sections`, which check what they read and name the file and field that is
wrong. A run folder may come from someone else: it reads only its own files (no path, symlink or variant
pointing outside it).

>>> from nnforge import runs
>>> runs.with_runtime_columns(["fp32", "int8"], {"int8-native_acc": 0.9})
['fp32', 'int8', 'int8-native']
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from nnforge.errors import ConfigError, IntegrityError
from nnforge.ledger import atomic_write_text

__all__ = ["CONFIG", "METRICS", "SECTIONS", "REPORT", "STATUSES", "NATIVE_SUFFIX", "MAX_JSON_BYTES",
           "is_run_folder", "find_run", "run_file", "read_config", "read_metrics", "read_sections",
           "write_config", "update_config", "write_metrics", "write_sections", "variant_path",
           "with_runtime_columns", "TRASH", "process_facts", "status_of", "list_runs", "move_to_trash",
           "copied_from"]

CONFIG, METRICS, SECTIONS, REPORT = "config.json", "metrics.json", "sections.json", "report.html"
STATUSES = ("running", "finished", "failed", "interrupted")
NATIVE_SUFFIX = "-native"
"""A saved variant run by ``nnforge.deploy.native`` is named ``<variant>-native`` (``Run.model("int8-native")``);
the report, the documents and the recipes share this one spelling."""
MAX_JSON_BYTES = 32 << 20
"""A run file larger than this is refused rather than parsed (run folders may come from someone else)."""

# ---------------------------------------------------------------------------------------------------------
# finding a run and its files


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a run folder (it holds a ``config.json``)."""
    return (Path(path) / CONFIG).is_file()


def find_run(run: str | os.PathLike[str], runs_dir: str | os.PathLike[str] = "runs") -> Path:
    """A run folder from its path or its id (looked up under ``runs_dir``).

    Raises:
        ConfigError: neither is a run folder.
    """
    for candidate in (Path(run), Path(runs_dir) / str(run)):
        if is_run_folder(candidate):
            return candidate
    raise ConfigError(f"{run}: not a run folder or run id (no {CONFIG} there or under {runs_dir}/)")


def run_file(run_dir: str | os.PathLike[str], name: str) -> Path | None:
    """The regular file ``name`` (subfolders allowed) inside ``run_dir``, or ``None`` when it is absent, not a
    file, or resolves outside the folder (``..``, an absolute path, a symlink out)."""
    if not name or "\x00" in name or os.path.isabs(name):
        return None
    folder = Path(run_dir).resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        return None
    return path


def variant_path(run_dir: Path, name: str, relative: object) -> Path:
    """The file of saved variant ``name`` (``relative`` as the run's config.json lists it).

    Raises:
        IntegrityError: it points outside the run folder.
    """
    path = run_dir / str(relative)
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise IntegrityError(f"{run_dir / CONFIG}: variant {name!r} points outside the run folder "
                             f"({relative!r}); a run reads only its own files")
    return path


def with_runtime_columns(variants: list[str], measured: Collection[str]) -> list[str]:
    """``variants`` plus ``<v>-native`` for each ``v`` whose native column was measured (``<v>-native_acc``)."""
    extra = [f"{v}{NATIVE_SUFFIX}" for v in variants
             if f"{v}{NATIVE_SUFFIX}" not in variants and f"{v}{NATIVE_SUFFIX}_acc" in measured]
    return variants + extra


# ---------------------------------------------------------------------------------------------------------
# the schema


def _is_str_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


# field → (check, what it must be); a field may be absent (older runs), but when present it must fit
_CONFIG_FIELDS: dict[str, tuple[Any, str]] = {
    "run_id": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "created": (lambda v: isinstance(v, str), "an ISO date string"),
    "recipe": (lambda v: isinstance(v, dict), "an object (the recipe)"),
    "recipe_source": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "environment": (lambda v: isinstance(v, dict), "an object (machine facts)"),
    "ledger": (lambda v: isinstance(v, str), "a string (the ledger's path or redacted URL)"),
    "label_names": (_is_str_list, "a list of strings"),
    "status": (lambda v: v in STATUSES, f"one of {list(STATUSES)}"),
    "ended": (lambda v: isinstance(v, str), "an ISO date string"),
    "folder": (lambda v: isinstance(v, str), "a string (the absolute path the run was created at)"),
    "host": (lambda v: isinstance(v, str), "a string (the machine's host name)"),
    "pid": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    "pid_start": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "variants": (_is_str_map, "an object of variant name → weights file name"),
    "final_variant": (lambda v: v is None or isinstance(v, str), "a variant name or null"),
    "artifacts": (_is_str_map, "an object of artifact name → file name"),
}


def _config_problems(doc: Mapping[str, Any]) -> list[str]:
    problems = [f"field {key!r} must be {what}; got {doc[key]!r:.80}"
                for key, (check, what) in _CONFIG_FIELDS.items() if key in doc and not check(doc[key])]
    final, variants = doc.get("final_variant"), doc.get("variants")
    if isinstance(final, str) and isinstance(variants, dict) and final not in variants:
        problems.append(f"field 'final_variant' names {final!r}, which is not among its variants {sorted(variants)}")
    return problems


def _check_object(doc: object, path: Path) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise IntegrityError(f"{path}: expected a JSON object, found {type(doc).__name__}; the run folder is "
                             "damaged or was not written by nnforge")
    bad = [k for k in doc if not isinstance(k, str)]
    if bad:  # pragma: no cover - JSON keys are always strings; a caller's dict may not be
        raise IntegrityError(f"{path}: keys must be strings; got {bad[:3]}")
    return doc


def _read_json(run_dir: Path, name: str, required: bool) -> dict[str, Any]:
    path = run_dir / name
    if not path.exists() and not path.is_symlink():
        if required:
            raise ConfigError(f"{run_dir}: not a run folder (no {name})")
        return {}
    inside = run_file(run_dir, name)
    if inside is None:
        raise IntegrityError(f"{path}: not a regular file inside the run folder; a run reads only its own files")
    if inside.stat().st_size > MAX_JSON_BYTES:
        raise IntegrityError(f"{path}: {inside.stat().st_size} bytes, over the {MAX_JSON_BYTES}-byte limit for a "
                             "run file")
    try:
        doc = json.loads(inside.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc})") from None
    return _check_object(doc, path)


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's ``config.json``, checked against the schema.

    Raises:
        ConfigError: ``run_dir`` is not a run folder (no config.json).
        IntegrityError: the file is not a JSON object, or a field has the wrong type (each problem named).
    """
    folder = Path(run_dir)
    doc = _read_json(folder, CONFIG, required=True)
    problems = _config_problems(doc)
    if problems:
        raise IntegrityError(f"{folder / CONFIG}: " + "; ".join(problems))
    return doc


def read_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's ``metrics.json`` (``{}`` before the first step wrote it).

    Raises:
        IntegrityError: not a JSON object, or a figure that is not a number, string, bool, list or object.
    """
    path = Path(run_dir) / METRICS
    doc = _read_json(Path(run_dir), METRICS, required=False)
    return _check_metrics(doc, path)


def _check_metrics(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    bad = [k for k, v in doc.items() if not (v is None or isinstance(v, (int, float, str, bool, list, dict)))]
    if bad:
        raise IntegrityError(f"{path}: figures {bad[:5]} are not JSON values (numbers, strings, lists, objects)")
    return doc


def read_sections(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's ``sections.json`` (``{}`` when absent). Raises IntegrityError when it is not a JSON object."""
    return _read_json(Path(run_dir), SECTIONS, required=False)


# ---------------------------------------------------------------------------------------------------------
# writing (atomic: temporary file + rename)


def write_config(run_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> None:
    """Write ``config.json`` atomically after checking it against the schema.

    Raises:
        IntegrityError: a field has the wrong type (nothing is written).
    """
    path = Path(run_dir) / CONFIG
    problems = _config_problems(config)
    if problems:
        raise IntegrityError(f"refusing to write {path}: " + "; ".join(problems))
    atomic_write_text(path, json.dumps(dict(config), indent=2, sort_keys=True, default=str) + "\n")


def update_config(run_dir: str | os.PathLike[str], **fields: Any) -> dict[str, Any]:
    """Set ``fields`` in the run's ``config.json`` (read, checked, rewritten atomically); returns the new config."""
    config = {**read_config(run_dir), **fields}
    write_config(run_dir, config)
    return config


def write_metrics(run_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
    """Write ``metrics.json`` atomically."""
    path = Path(run_dir) / METRICS
    doc = _check_metrics(_check_object(dict(metrics), path), path)
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def write_sections(run_dir: str | os.PathLike[str], sections: Mapping[str, Any]) -> None:
    """Write ``sections.json`` atomically (values that are not JSON are written as their ``str``)."""
    atomic_write_text(Path(run_dir) / SECTIONS, json.dumps(dict(sections), indent=1, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------------------------------------------------
# a run's lifecycle: who runs it, whether it still runs, listing, moving to the trash

TRASH = ".trash"
"""``runs rm`` moves a run folder to ``<runs dir>/.trash/<run-id>``: the files stay until someone deletes them."""


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), to tell it from a later one with its id."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def process_facts(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What a new run's config.json records about where it runs: its folder, host, process id and start."""
    import socket

    return {"folder": str(Path(run_dir).resolve()), "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid())}


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    except OSError:
        return False
    now = _process_start(pid)
    return started is None or now is None or now == started


def status_of(config: Mapping[str, Any]) -> str:
    """The run's status: as recorded, except that a "running" run whose process on this host is gone (killed,
    the machine rebooted) is "interrupted". A run running on another host is taken at its word."""
    import socket

    status = config.get("status")
    if not isinstance(status, str):
        return "unknown"
    pid = config.get("pid")
    if status == "running" and isinstance(pid, int) and config.get("host") == socket.gethostname():
        started = config.get("pid_start")
        if not _alive(pid, started if isinstance(started, str) else None):
            return "interrupted"
    return status


def list_runs(runs_dir: str | os.PathLike[str] = "runs") -> list[tuple[Path, dict[str, Any] | None, str]]:
    """Every run folder under ``runs_dir`` (the trash left out), oldest first: ``(folder, config or None when
    it cannot be read, status)``; an unreadable config.json gives status "unreadable"."""
    folder = Path(runs_dir)
    if not folder.is_dir():
        return []
    found: list[tuple[Path, dict[str, Any] | None, str]] = []
    for path in sorted(p for p in folder.iterdir() if p.name != TRASH and is_run_folder(p)):
        try:
            config = read_config(path)
        except (ConfigError, IntegrityError):
            found.append((path, None, "unreadable"))
            continue
        found.append((path, config, status_of(config)))
    found.sort(key=lambda row: (str((row[1] or {}).get("created", "")), row[0].name))
    return found


def move_to_trash(run_dir: str | os.PathLike[str]) -> Path:
    """Move a run folder into the trash folder beside it (``<runs dir>/.trash/``); returns its new path. A
    folder of the same name already there is kept: the new one gets a numbered name."""
    src = Path(run_dir)
    trash = src.parent / TRASH
    trash.mkdir(exist_ok=True)
    dest, n = trash / src.name, 1
    while dest.exists():
        dest, n = trash / f"{src.name}.{n}", n + 1
    os.replace(src, dest)
    return dest


def copied_from(run_dir: str | os.PathLike[str]) -> Path | None:
    """Where a run folder was created when it now lies elsewhere (copied or moved), else ``None``."""
    try:
        folder = read_config(run_dir).get("folder")
    except (ConfigError, IntegrityError):
        return None
    if not isinstance(folder, str) or Path(folder) == Path(run_dir).resolve():
        return None
    return Path(folder)
