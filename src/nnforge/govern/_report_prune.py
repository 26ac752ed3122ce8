"""The report's pruning section, rendered from the ledger's ``prune.layer`` and ``prune.applied`` events.

Each pruned variant gets one paragraph that says plainly what pruning bought — parameters, stored bytes,
file size, FLOPs, and whether the pruned model was measured faster at batch 1 (or saves memory but not
time, or saves nothing because only masks were applied) — a per-module table and a plot of per-layer
sparsity and FLOPs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nnforge.ledger import Event

__all__ = ["prune_sections", "prune_sentence"]


def prune_sections(events: list[Event], png: Callable[[Any], str] | None = None) -> list[dict[str, Any]]:
    """One entry per pruned variant (the newest record of each): the ``prune.applied`` event's data, its
    ``layers`` (the ``prune.layer`` events recorded just before it), a ``sentence`` and, given ``png`` (a
    matplotlib figure → data URL), a ``plot``."""
    found: dict[str, dict[str, Any]] = {}
    pending: list[dict[str, Any]] = []
    for e in events:
        if e.kind == "prune.layer":
            pending.append(dict(e.data))
        elif e.kind == "prune.applied":
            variant = str(e.data.get("variant"))
            layers = [x for x in pending if x.get("variant") == variant]
            found[variant] = {**e.data, "layers": layers, "seq": e.seq, "sentence": prune_sentence(e.data)}
            pending = []
    out = list(found.values())
    if png is not None:
        for entry in out:
            entry["plot"] = _plot(entry, png)
    return out


def _mb(n: Any) -> str:
    return f"{n / 1e6:.2f} MB" if isinstance(n, (int, float)) else "?"


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}×" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "?"


def prune_sentence(s: dict[str, Any]) -> str:
    """What pruning bought this variant, in words, from its ``prune.applied`` record."""
    sparsity = s.get("sparsity")
    gone = f"{sparsity:.1%} of their weights are zero or removed" if isinstance(sparsity, (int, float)) else \
        "their sparsity was not measurable"
    parts = [f"{s.get('variant')}: {s.get('method')} pruned {s.get('modules')} modules of {s.get('base')}; {gone}."]
    parts.append(f"Parameters stored {s.get('params_after')} of {s.get('params_before')} "
                 f"({_ratio(s.get('params_after'), s.get('params_before'))}); weights as stored "
                 f"{_mb(s.get('bytes_before'))} → {_mb(s.get('bytes_after'))}; file {_mb(s.get('base_file_bytes'))} → "
                 f"{_mb(s.get('file_bytes'))}.")
    if isinstance(s.get("flops_ratio"), (int, float)):
        parts.append(f"FLOPs per batch as executed: {s['flops_ratio']:.2f}× the base's.")
    saves_memory = isinstance(s.get("bytes_after"), int) and isinstance(s.get("bytes_before"), int) \
        and s["bytes_after"] < s["bytes_before"]
    t = s.get("latency_b1")
    if not isinstance(t, dict):
        parts.append("Its speed was not measured.")
    elif t.get("verdict") == "faster":
        lo, hi = t["speedup_ci"]
        parts.append(f"Measured FASTER at batch 1: {t['speedup']:.2f}× the base's speed (95% interval {lo:.2f} to "
                     f"{hi:.2f}; {t['pruned_ms']:.2f} vs {t['base_ms']:.2f} ms).")
        flops = s.get("flops_ratio")
        if not saves_memory and isinstance(flops, (int, float)) and flops >= 1.0:
            # Nothing it executes changed: a significant difference is this machine's drift, not pruning's.
            parts.append("Yet it executes the same dense matrices (no fewer FLOPs, weights no smaller): zeros kept "
                         "in dense matrices save nothing, so that difference is this machine's noise, not pruning's.")
    else:
        lo, hi = t["speedup_ci"]
        why = ("sparsity saves memory here, not time" if saves_memory
               else "and the stored weights are no smaller either: zeros kept in dense matrices save nothing")
        parts.append(f"NOT faster at batch 1 ({t['verdict']}: {t['speedup']:.2f}× the base's speed, 95% interval "
                     f"{lo:.2f} to {hi:.2f}; {t['pruned_ms']:.2f} vs {t['base_ms']:.2f} ms): {why}.")
    return " ".join(parts)


def _plot(entry: dict[str, Any], png: Callable[[Any], str]) -> str | None:
    layers = [x for x in entry["layers"] if isinstance(x.get("sparsity"), (int, float))]
    if not layers:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [x["module"] for x in layers]
    flops = [(x.get("flops_before"), x.get("flops_after")) for x in layers]
    with_flops = all(isinstance(a, int) and a and isinstance(b, int) for a, b in flops)
    fig, axes = plt.subplots(1, 2 if with_flops else 1, figsize=(9 if with_flops else 5, 0.6 + 0.22 * len(names)),
                             squeeze=False)
    ax = axes[0][0]
    ax.barh(range(len(names)), [x["sparsity"] for x in layers], color="tab:purple")
    ax.set_yticks(range(len(names)), names, fontsize=7), ax.invert_yaxis()
    ax.set_xlim(0, 1), ax.set_xlabel("sparsity (zero or removed)"), ax.set_title(f"{entry['variant']}: per layer")
    if with_flops:
        ax = axes[0][1]
        ax.barh(range(len(names)), [b / a for a, b in flops], color="tab:red")
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        ax.set_yticks(range(len(names)), []), ax.invert_yaxis()
        ax.set_xlabel("FLOPs as executed / base"), ax.set_title("FLOPs per layer")
    src = png(fig)
    plt.close(fig)
    return src
