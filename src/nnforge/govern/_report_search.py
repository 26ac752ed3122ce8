"""The report's search section, rendered from the ledger's ``search.started``, ``search.trial`` and
``search.finished`` events.

Each study gets a paragraph (what was searched, how many trials finished, were pruned, failed or broke a
constraint, which trial won and what it measured), a Pareto plot of the first two objectives (the front
joined, infeasible trials hollow), a bar chart of parameter importances, the trials table and links to the
best trials' ready-to-run recipes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from nnforge.ledger import Event

__all__ = ["search_sections", "search_sentence"]


def search_sections(events: list[Event], png: Callable[[Any], str] | None = None) -> list[dict[str, Any]]:
    """One entry per study the run searched (in order): the ``search.started`` data, its ``trials`` (the
    ``search.trial`` records after it, feasibility from ``search.finished``), the ``search.finished`` data as
    ``result``, a ``sentence`` and, given ``png`` (a matplotlib figure → data URL), ``pareto_plot`` and
    ``importance_plot``."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for e in events:
        if e.kind == "search.started":
            current = {**e.data, "trials": [], "result": None, "seq": e.seq}
            out.append(current)
        elif e.kind == "search.screen" and current is not None:
            current["screen"] = {k: v for k, v in e.data.items() if k != "pairs"}
        elif e.kind == "search.trial" and current is not None:
            current["trials"].append(dict(e.data))
        elif e.kind == "search.finished" and current is not None:
            current["result"] = dict(e.data)
            _merge(current)
            current = None
    for entry in out:
        entry["trials"].sort(key=lambda t: t.get("number", 0))
        entry["sentence"] = search_sentence(entry)
        if entry.get("screen") is not None:
            entry["screen"]["screened"] = sum(1 for t in entry["trials"]
                                              if str(t.get("pruned_reason") or "").startswith("screened"))
        if png is not None:
            entry["pareto_plot"] = _pareto_plot(entry, png)
            entry["importance_plot"] = _importance_plot(entry, png)
    return out


def _merge(entry: dict[str, Any]) -> None:
    """The study's final view of each trial (state, feasibility; trials of other workers or of an earlier,
    resumed session) merged into the trial records."""
    by_number = {t.get("number"): t for t in entry["trials"]}
    for t in (entry["result"] or {}).get("trials", []):
        mine = by_number.get(t.get("number"))
        if mine is None:
            entry["trials"].append({**t, "recorded_elsewhere": True})
        else:
            mine.update({k: v for k, v in t.items() if k in ("state", "feasible", "values")})


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def search_sentence(s: dict[str, Any]) -> str:
    """What the study did and found, in words."""
    objectives = s.get("objectives") or []
    what = ", ".join(f"{o.get('direction', 'minimize')} {o.get('metric')}" for o in objectives)
    trials = s.get("trials", [])
    states = [str(t.get("state", "")).lower() for t in trials]
    infeasible = sum(1 for t in trials if t.get("feasible") is False and str(t.get("state", "")).lower() == "complete")
    pruner = "no pruner" if s.get("pruner") in (None, "none") else f"{s.get('pruner')} pruner"
    parts = [f"Study {s.get('study_name')!r} ({s.get('sampler')} sampler, {pruner}) searched "
             f"{len(s.get('space') or {})} parameters to {what or 'its objectives'}"
             + (f" under {', '.join(s.get('constraints') or [])}" if s.get("constraints") else "") + "."]
    parts.append(f"{len(trials)} trials: {states.count('complete')} complete, {states.count('pruned')} pruned, "
                 f"{states.count('failed') + states.count('fail')} failed; {infeasible} of the complete broke a "
                 "constraint.")
    result = s.get("result")
    if result is None:
        parts.append("The study did not finish (no search.finished record): the run stopped during it.")
        return " ".join(parts)
    best = result.get("best") or []
    if not best:
        parts.append("No trial was feasible and complete: there is no best trial.")
        return " ".join(parts)
    first = best[0]
    figures = ", ".join(f"{o.get('metric')} {_fmt((first.get('metrics') or {}).get(o.get('metric')))}"
                        for o in objectives)
    n = len(best)
    kept = (f"the Pareto front's {n} trial{'s' if n != 1 else ''} (at most best_recipes)" if len(objectives) > 1
            else f"the {n} best")
    parts.append(f"Best: trial {first.get('number')} ({figures}); {kept} written as ready-to-run recipes. The "
                 f"run's model is trial {first.get('number')}'s.")
    return " ".join(parts)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _pareto_plot(entry: dict[str, Any], png: Callable[[Any], str]) -> str | None:
    """Complete trials by their first two objectives (or the first against trial number), the best joined."""
    objectives = entry.get("objectives") or []
    plt = _pyplot()
    if plt is None or not objectives:
        return None
    xm = objectives[0]["metric"]
    ym = objectives[1]["metric"] if len(objectives) > 1 else None
    rows = [t for t in entry["trials"] if str(t.get("state", "")).lower() == "complete"
            and _finite((t.get("metrics") or {}).get(xm)) and (ym is None or _finite(t["metrics"].get(ym)))]
    if not rows:
        return None
    best = {b.get("number") for b in ((entry.get("result") or {}).get("best") or [])}
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for feasible in (True, False):
        pts = [t for t in rows if (t.get("feasible") is not False) == feasible]
        if not pts:
            continue
        xs = [t["metrics"][xm] if ym else t["number"] for t in pts]
        ys = [t["metrics"][ym] if ym else t["metrics"][xm] for t in pts]
        ax.scatter(xs, ys, s=22, facecolors="tab:blue" if feasible else "none", edgecolors="tab:blue",
                   label="feasible" if feasible else "infeasible (broke a constraint)")
    front = sorted((t for t in rows if t.get("number") in best), key=lambda t: t["metrics"][xm])
    if front and ym:
        ax.plot([t["metrics"][xm] for t in front], [t["metrics"][ym] for t in front], "o-", color="tab:red",
                label="Pareto front")
    elif front:
        ax.scatter([t["number"] for t in front], [t["metrics"][xm] for t in front], color="tab:red", label="best")
    ax.set_xlabel(xm if ym else "trial"), ax.set_ylabel(ym or xm)
    ax.set_title("trials" + (" and the Pareto front" if ym else "")), ax.legend(fontsize=7)
    src = png(fig)
    plt.close(fig)
    return src


def _importance_plot(entry: dict[str, Any], png: Callable[[Any], str]) -> str | None:
    importances = (entry.get("result") or {}).get("importances") or {}
    target = ""
    if isinstance(importances, dict) and importances and all(isinstance(v, dict) for v in importances.values()):
        target, importances = next(iter(importances.items()))  # per objective: the first objective's
    rows = [(k, v) for k, v in importances.items() if _finite(v)]
    plt = _pyplot()
    if plt is None or not rows:
        return None
    rows.sort(key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(5.5, 0.6 + 0.3 * len(rows)))
    ax.barh([k for k, _ in rows], [v for _, v in rows], color="tab:green")
    ax.set_xlabel("importance (Optuna's fANOVA or PED-ANOVA, normalised to sum 1)"), ax.set_title(f"parameter importances for {target}" if target else "parameter importances")
    ax.tick_params(axis="y", labelsize=7)
    src = png(fig)
    plt.close(fig)
    return src
