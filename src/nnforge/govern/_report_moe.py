"""The report's mixture-of-experts section: routing over training (from the train step's ``moe`` section), the
ledger's ``moe.alarm`` events, which experts serve each document group (genre), and the routing drift of a
fine-tuning step, with plots."""

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
    groups = _groups(moe)
    return {"layers": list(final.values()), "alarms": alarms, "step": moe.get("step", "train"),
            "plot": _plot(moe["history"], final, png) if png is not None else None,
            "groups": groups, "groups_plot": _groups_plot(moe, png) if png is not None and groups else None,
            "drift": moe.get("drift") or [], "trained_on": moe.get("trained_on"),
            "router_frozen": moe.get("router_frozen", False), "upcycle": sections.get("upcycle")}


def _groups(moe: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (layer, group): the experts serving the group now (and before this step, if known)."""
    by, before = moe.get("by_group") or {}, moe.get("by_group_before") or {}
    rows = []
    for group, layers in (by.get("serving") or {}).items():
        for layer, experts in layers.items():
            prev = ((before.get("serving") or {}).get(group) or {}).get(layer)
            rows.append({"group": group, "layer": layer, "experts": experts, "before": prev,
                         "tokens": (by.get("tokens") or {}).get(group)})
    return rows


def _groups_plot(moe: dict[str, Any], png: Callable[[Any], str]) -> str | None:
    """A heat map per layer: document group x expert, the share of the group's assignments."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    load = moe["by_group"]["load"]  # group -> layer -> (E,)
    groups = list(load)
    layers = list(load[groups[0]])
    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers) + 1, 0.45 * len(groups) + 1.4),
                             squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        grid = [load[g][layer] for g in groups]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
        ax.set_title(layer.replace("transformer.", ""), fontsize=8)
        ax.set_yticks(range(len(groups)), groups if ax is axes[0][0] else [""] * len(groups), fontsize=8)
        ax.set_xticks(range(len(grid[0])))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("expert", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="share of assignments")
    out = png(fig)
    plt.close(fig)
    return out


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
