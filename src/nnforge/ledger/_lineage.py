"""Lineage: the chain of ledger events that produced an artifact, and what was done with it afterwards.

An artifact is named by a file path (its sha256 is computed), a sha256 (full, or a unique prefix of at
least 8 hex digits) or ``RUN_ID:NAME`` (``20261128-053421-148a00:model:int8``). The chain is read from
the facts the recipe runner records, never guessed: the run (``run.started``), its data
(``data.loaded``), the base model (``model.loaded``), every step that started before the artifact was
written with a summary of its config and the model artifacts it wrote (``step.started``,
``artifact.written``, ``step.finished``), then the evaluations of that model variant (``step.finished``
metrics prefixed with the variant, ``suite.evaluated``), runs that wrote or loaded the same bytes, and
the approval: ``model.promoted`` / ``model.revoked`` events of the same bytes (``nnforge promote``), or "not
approved" when there are none.

>>> from nnforge.ledger import Ledger, lineage
>>> lin = lineage(Ledger.open(".nnforge/ledger.db"), "20261128-053421-148a00:model:int8")  # doctest: +SKIP
>>> [n.kind for n in lin.nodes]  # doctest: +SKIP
['run', 'data', 'model', 'step', 'step', 'artifact', 'step', 'artifact', 'evaluation', 'suite', 'approval']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnforge.errors import ConfigError
from nnforge.ledger._events import Event
from nnforge.ledger._ledger import Ledger, file_sha256

__all__ = ["Lineage", "LineageNode", "lineage", "MIN_PREFIX"]

MIN_PREFIX = 8
"""Shortest sha256 prefix accepted, so that a prefix is very unlikely to be ambiguous by accident."""

_HEX = re.compile(r"^[0-9a-fA-F]+$")
_SUMMARY_CHARS = 120


@dataclass(frozen=True)
class LineageNode:
    """One link of the chain.

    Attributes:
        kind: ``run``, ``data``, ``model``, ``step``, ``artifact``, ``evaluation``, ``suite``, ``same-artifact``
            (the same bytes written in another run), ``used-by`` (another run loaded them) or ``approval``.
        label: one line for people.
        seq: the ledger event it comes from (``None`` only for the approval placeholder).
        run: the run of that event.
        details: the facts behind the label (full step config, metrics, hashes…).
    """

    kind: str
    label: str
    seq: int | None
    run: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "seq": self.seq, "run": self.run, "details": self.details}


@dataclass(frozen=True)
class Lineage:
    """The chain behind one artifact: ``nodes`` from the data to the latest evaluation, then the approval."""

    artifact: dict[str, Any]
    nodes: list[LineageNode]
    approved: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "approved": self.approved, "nodes": [n.to_dict() for n in self.nodes]}


def _candidates_text(events: list[Event]) -> str:
    return "; ".join(f"{e.run}:{e.data.get('name')} (sha256 {str(e.data.get('sha256'))[:16]}…, event #{e.seq})"
                     for e in events)


def _resolve(artifact: str, written: list[Event], files: bool = True) -> tuple[Event, str]:
    """The ``artifact.written`` event an artifact reference names (the newest one when the same bytes were
    written several times), and how it was named; ``files=False`` never reads a path (untrusted callers)."""
    runs = {e.run for e in written if e.run}
    head, sep, name = artifact.partition(":")
    if sep and head in runs:
        hits = [e for e in written if e.run == head and e.data.get("name") == name]
        if not hits:
            names = sorted({str(e.data.get("name")) for e in written if e.run == head})
            raise ConfigError(f"artifact {artifact!r}: run {head} wrote no artifact named {name!r}; it wrote: "
                              f"{', '.join(names) or 'nothing'}")
        return hits[-1], "run:name"
    if sep and not files:
        raise ConfigError(f"artifact {artifact!r}: {head!r} is not a run id in the ledger; give RUN_ID:NAME or a "
                          "sha256")
    path = Path(artifact)
    if files and path.is_file():
        digest = file_sha256(path)
        hits = [e for e in written if e.data.get("sha256") == digest]
        if not hits:
            raise ConfigError(f"artifact {artifact!r}: no run in the ledger wrote a file with this content "
                              f"(sha256 {digest}); was it produced elsewhere, or modified since?")
        return hits[-1], "file"
    if _HEX.match(artifact) and len(artifact) >= MIN_PREFIX:
        prefix = artifact.lower()
        hits = [e for e in written if str(e.data.get("sha256", "")).startswith(prefix)]
        if not hits:
            raise ConfigError(f"artifact {artifact!r}: no artifact in the ledger has a sha256 starting with "
                              f"{prefix}")
        digests = {e.data.get("sha256") for e in hits}
        if len(digests) > 1:
            raise ConfigError(f"artifact {artifact!r}: sha256 prefix is ambiguous, {len(digests)} different "
                              f"artifacts match: {_candidates_text(hits)}. Give more hex digits.")
        return hits[-1], "sha256"
    raise ConfigError(f"artifact {artifact!r}: not an existing file, not a sha256 (at least {MIN_PREFIX} hex "
                      f"digits) and not RUN_ID:NAME with a run id in the ledger (runs: "
                      f"{', '.join(sorted(runs)) or 'none'})")


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        items: list[tuple[str, Any]] = []
        for k in sorted(obj):
            items.extend(_flatten(obj[k], f"{prefix}{k}."))
        return items
    return [(prefix[:-1], obj)]


def config_summary(config: dict[str, Any], limit: int = _SUMMARY_CHARS) -> str:
    """``key=value`` for the set (non-null) settings of a step config, nested keys dotted, cut at ``limit``."""
    parts = []
    for key, value in _flatten(config):
        if value is None or value == [] or value == {}:
            continue
        shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key}={shown}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _variant(name: str) -> str | None:
    kind, sep, variant = name.partition(":")
    return variant if kind == "model" and sep and variant else None


def _metrics_summary(metrics: dict[str, Any], limit: int = 6) -> str:
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(metrics.items())[:limit]]
    more = f", … {len(metrics) - limit} more" if len(metrics) > limit else ""
    return ", ".join(shown) + more


def _loaded_sha256(source: dict[str, Any]) -> str | None:
    """The sha256 of the weights a ``model.loaded`` event names, when it names a file (or a digest)."""
    if isinstance(source.get("sha256"), str):
        return str(source["sha256"])
    weights = source.get("safetensors")
    if isinstance(weights, str) and Path(weights).is_file():
        return file_sha256(weights)
    return None


def _suite_node(e: Event) -> LineageNode:
    d = e.data
    verdict = "passed" if d.get("passed") else f"FAILED ({', '.join(map(str, d.get('failed') or [])) or '?'})"
    checks = d.get("checks") or []
    label = (f"{d.get('suite')} on {d.get('variant')}: {verdict}, {len(checks)} checks, "
             f"suite sha256 {str(d.get('suite_sha256'))[:12]}…")
    details = {k: d.get(k) for k in ("suite", "suite_sha256", "suite_source", "variant", "baseline", "passed",
                                      "failed", "outputs")}
    details["checks"] = checks
    return LineageNode("suite", label, e.seq, e.run, details)


def _evaluations(run_events: list[Event], after: int, variant: str, skip_index: Any) -> list[LineageNode]:
    """Evaluations of ``variant`` in one run after event ``after``: step metrics prefixed ``<variant>_`` (except
    those of the step that wrote the artifact) and ``suite.evaluated`` events for that variant."""
    found = []
    for e in run_events:
        if e.seq <= after:
            continue
        if e.kind == "step.finished" and e.data.get("index") != skip_index:
            metrics = {k[len(variant) + 1:]: v for k, v in (e.data.get("metrics") or {}).items()
                       if k.startswith(f"{variant}_")}
            if metrics:
                found.append(LineageNode("evaluation", f"{e.data.get('step')} step on {variant}: "
                                                       f"{_metrics_summary(metrics)}", e.seq, e.run,
                                         {"step": e.data.get("step"), "variant": variant, "metrics": metrics}))
        elif e.kind == "suite.evaluated" and e.data.get("variant") == variant:
            found.append(_suite_node(e))
    return found


def lineage(ledger: Ledger, artifact: str, *, files: bool = True) -> Lineage:
    """The chain that produced ``artifact`` (a file path, a sha256 or unique prefix, or ``RUN_ID:NAME``).
    ``files=False`` (a web request) never reads a path: only ``RUN_ID:NAME`` and sha256 references resolve.

    Raises:
        ConfigError: the artifact is unknown to the ledger, or a sha256 prefix matches several artifacts.
    """
    events = ledger.events()
    written = [e for e in events if e.kind == "artifact.written"]
    target, named_by = _resolve(artifact.strip(), written, files)
    run, at, name = target.run, target.seq, str(target.data.get("name"))
    sha = str(target.data.get("sha256"))
    variant = _variant(name)
    in_run = [e for e in events if e.run == run]
    nodes: list[LineageNode] = []

    started = next((e for e in in_run if e.kind == "run.started"), None)
    run_dir = None
    if started is not None:
        recipe = started.data.get("recipe") or {}
        run_dir = started.data.get("run_dir")
        nodes.append(LineageNode("run", f"{run}: recipe {recipe.get('name', '?')} "
                                        f"(sha256 {str(recipe.get('sha256'))[:12]}…), seed {recipe.get('seed')}",
                                 started.seq, run,
                                 {"recipe": recipe.get("name"), "recipe_sha256": recipe.get("sha256"),
                                  "recipe_path": recipe.get("path"), "seed": recipe.get("seed"),
                                  "git_commit": started.data.get("git_commit"), "run_dir": run_dir}))
    for e in in_run:
        if e.seq >= at:
            break
        if e.kind == "data.loaded":
            splits = {k: {"n": v.get("n"), "sha256": v.get("sha256")} for k, v in (e.data.get("splits") or {}).items()}
            shown = ", ".join(f"{k} n={v['n']} sha256 {str(v['sha256'])[:12]}…" for k, v in splits.items())
            nodes.append(LineageNode("data", f"{e.data.get('name')}: {shown}".rstrip(": "), e.seq, run,
                                     {"name": e.data.get("name"), "source": e.data.get("source"), "splits": splits}))
        elif e.kind == "model.loaded":
            source = e.data.get("source") or {}
            base_sha = _loaded_sha256(source)
            if base_sha is not None:
                for up in written:
                    if up.data.get("sha256") == base_sha and up.run != run and up.seq < e.seq:
                        nodes.append(LineageNode("artifact", f"base weights: {up.data.get('name')} of run {up.run}",
                                                 up.seq, up.run, dict(up.data)))
                        break
            what = source.get("name") or source.get("hf_dir") or source.get("safetensors") or source.get(
                "architecture") or "?"
            params = e.data.get("parameters")
            nodes.append(LineageNode("model", f"{what}" + (f", {params:,} parameters" if params else ""),
                                     e.seq, run, {"source": source, "parameters": params, "sha256": base_sha,
                                                  "num_classes": e.data.get("num_classes")}))
        elif e.kind == "step.started":
            config = e.data.get("config") or {}
            nodes.append(LineageNode("step", f"{e.data.get('step')}: {config_summary(config) or 'defaults'}",
                                     e.seq, run, {"step": e.data.get("step"), "index": e.data.get("index"),
                                                  "config": config}))
        elif e.kind == "artifact.written" and _variant(str(e.data.get("name"))):
            nodes.append(LineageNode("artifact", f"{e.data.get('name')} {e.data.get('path')} "
                                                 f"(sha256 {str(e.data.get('sha256'))[:12]}…)", e.seq, run,
                                     dict(e.data)))
    nodes.append(LineageNode("artifact", f"{name} {target.data.get('path')} (sha256 {sha[:12]}…) ← this artifact",
                             at, run, {**target.data, "target": True}))

    producing = next((n for n in reversed(nodes) if n.kind == "step"), None)
    producing_index = producing.details.get("index") if producing else None
    later: list[LineageNode] = []
    for e in in_run:
        if e.seq > at and e.kind == "step.finished" and e.data.get("index") == producing_index and producing:
            producing.details.update(metrics=e.data.get("metrics") or {}, seconds=e.data.get("seconds"),
                                     finished_seq=e.seq)
            break
    if variant:
        later.extend(_evaluations(in_run, at, variant, producing_index))

    # The same bytes elsewhere: another run that wrote them (e.g. a baseline run) — its suites judged the same
    # model — or that loaded them as its base model.
    for other in written:
        if other.run == run or other.data.get("sha256") != sha:
            continue
        later.append(LineageNode("same-artifact", f"same bytes also written by run {other.run} as "
                                                  f"{other.data.get('name')}", other.seq, other.run, dict(other.data)))
        other_variant = _variant(str(other.data.get("name")))
        if other_variant:
            other_events = [e for e in events if e.run == other.run]
            other_index = next((e.data.get("index") for e in reversed(other_events)
                                if e.kind == "step.started" and e.seq < other.seq), None)
            later.extend(_evaluations(other_events, other.seq, other_variant, other_index))
    if variant:
        for e in events:
            if e.kind == "model.loaded" and e.run != run and _loaded_sha256(e.data.get("source") or {}) == sha:
                later.append(LineageNode("used-by", f"loaded as the base model of run {e.run}", e.seq, e.run,
                                         {"source": e.data.get("source")}))
    later.sort(key=lambda n: (n.run != run, n.seq or 0))  # this run first, then others, each oldest first
    nodes.extend(later)
    standing: set[int] = set()  # promotions of these bytes not revoked (revoking one leaves the others standing)
    for e in events:  # promotions and revocations of these exact bytes (nnforge promote), oldest first
        if e.kind in ("model.promoted", "model.revoked") and e.data.get("weights_sha256") == sha:
            promoted = e.kind == "model.promoted"
            if promoted:
                standing.add(e.seq)
            else:
                standing.discard(e.data.get("promotion_seq"))  # type: ignore[arg-type]
            what = (f"promoted to {e.data.get('stage')} by {e.data.get('approver')}" if promoted
                    else f"promotion revoked by {e.data.get('approver')}: {e.data.get('reason')}")
            nodes.append(LineageNode("approval", what, e.seq, e.run, dict(e.data)))
    if not any(n.kind == "approval" for n in nodes):
        nodes.append(LineageNode("approval", "not approved: the ledger holds no approval for this artifact", None, run,
                                 {}))
    info = {"name": name, "run": run, "sha256": sha, "path": target.data.get("path"), "bytes": target.data.get("bytes"),
            "seq": at, "run_dir": run_dir, "named_by": named_by}
    return Lineage(artifact=info, nodes=nodes, approved=bool(standing))
