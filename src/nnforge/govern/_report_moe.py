"""The report's mixture-of-experts section: routing over training (from the train step's ``moe`` section) and the
ledger's ``moe.alarm`` events, with plots."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["moe_section"]


def moe_section(sections: dict[str, Any], events: list[Any], png: Callable[[Any], str] | None = None
                ) -> dict[str, Any] | None:
    """``{"layers": [final row per layer], "alarms": [...], "plot": data URL or None}``, None without MoE."""
    moe = sections.get("moe")
    if not moe or not moe.get("history"):
        return None
    final: dict[str, dict[str, Any]] = {}
    for row in moe["history"]:
        final[row["layer"]] = row
    alarms = [dict(e.data, seq=e.seq) for e in events if e.kind == "moe.alarm"] or moe.get("alarms", [])
    return {"layers": list(final.values()), "alarms": alarms, "step": moe.get("step", "train"),
            "plot": _plot(moe["history"], final, png) if png is not None else None}


def _plot(history: list[dict[str, Any]], final: dict[str, dict[str, Any]], png: Callable[[Any], str]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
    for layer in final:
        rows = [r for r in history if r["layer"] == layer]
        ax1.plot([r["step"] for r in rows], [r["imbalance"] for r in rows], label=layer or "moe")
    ax1.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax1.set_xlabel("training step"), ax1.set_ylabel("max / mean expert load"), ax1.set_title("load imbalance")
    n = len(final)
    width = 0.8 / max(n, 1)
    for i, (layer, row) in enumerate(final.items()):
        ax2.bar([e + i * width for e in range(len(row["load"]))], row["load"], width=width, label=layer or "moe")
    ax2.set_xlabel("expert"), ax2.set_ylabel("share of assignments"), ax2.set_title("load at the last sample")
    if n <= 6:
        ax1.legend(fontsize=7), ax2.legend(fontsize=7)
    out = png(fig)
    plt.close(fig)
    return out
