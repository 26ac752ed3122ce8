"""The report's federated-learning section, from the ledger's ``federated.round`` events (and the step's section
for the partition): the global model's evaluation per round, bytes sent each way, each client's data and part in
the rounds, with plots."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nnforge.ledger import Event

__all__ = ["federated_section", "ANOMALY_FLAG"]

ANOMALY_FLAG = 3.0
"""A client's update whose robust z-score (distance to the coordinate-wise median update) exceeds this is flagged."""


def federated_section(sections: dict[str, Any], events: list[Event], png: Callable[[Any], str] | None = None
                      ) -> dict[str, Any] | None:
    """``{"rounds": [...], "clients": [...], "plot": data URL, ...}``, or None without a federated step."""
    step = sections.get("federate")
    rounds = [e.data for e in events if e.kind == "federated.round"]
    if not step and not rounds:
        return None
    step = step or {}
    per_client: dict[int, dict[str, Any]] = {}
    for part in step.get("partition", []):
        per_client[int(part["client"])] = {**part, "rounds": 0, "failures": 0, "loss": None, "seconds": 0.0,
                                           "anomaly": None, "suspect_rounds": 0}
    for r in rounds:
        for c in r.get("clients", []):
            if c.get("partition") is None:
                continue
            row = per_client.setdefault(int(c["partition"]), {"client": c["partition"], "rounds": 0, "failures": 0,
                                                               "loss": None, "seconds": 0.0, "anomaly": None,
                                                               "suspect_rounds": 0})
            if c.get("error"):
                row["failures"] += 1
                continue
            row["rounds"] += 1
            row["seconds"] += float(c.get("seconds") or 0.0)
            row["loss"] = c.get("loss")  # the latest round's
            if c.get("anomaly") is not None:
                row["anomaly"] = max(float(c["anomaly"]), row["anomaly"] if row["anomaly"] is not None else -1e9)
                row["suspect_rounds"] += int(float(c["anomaly"]) > ANOMALY_FLAG)
    config = step.get("config", {})
    config = config.get("data", config)  # a serialised config: {"type", "version", "data"}
    total_bytes = sum(int(r.get("bytes_down", 0)) + int(r.get("bytes_up", 0)) for r in rounds)
    failures = [{"round": r["round"], "node": c.get("node"), "error": c["error"]} for r in rounds
                for c in r.get("clients", []) if c.get("error")]
    return {"rounds": rounds, "clients": [per_client[k] for k in sorted(per_client)], "config": config,
            "strategy": config.get("strategy", step.get("strategy")), "partition": config.get("partition"),
            "partition_options": config.get("partition_options") or {}, "total_bytes": total_bytes,
            "failures": failures, "final": step.get("final") or {}, "flag": ANOMALY_FLAG,
            "privacy": rounds[-1].get("privacy") if rounds else None,
            "secure": (config.get("secure") or None),
            "ciphertexts": max((int((r.get("secure") or {}).get("ciphertexts", 0)) for r in rounds), default=0), "engine": step.get("engine", "simulation"),
            "plot": _plot(rounds, png) if png is not None and rounds else None}


def _plot(rounds: list[dict[str, Any]], png: Callable[[Any], str]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    evaluated = [r for r in rounds if r.get("evaluation")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    ax = axes[0]
    if evaluated:
        xs = [r["round"] for r in evaluated]
        if all("accuracy" in r["evaluation"] for r in evaluated):
            ax.plot(xs, [r["evaluation"]["accuracy"] for r in evaluated], marker="o", ms=3, label="accuracy")
            ax.set_ylim(0, 1)
        ax2 = ax.twinx()
        ax2.plot(xs, [r["evaluation"]["loss"] for r in evaluated], color="tab:red", ls="--", label="loss")
        ax2.set_ylabel("loss", color="tab:red")
    ax.set_xlabel("round"), ax.set_title("global model on held-out data")
    ax = axes[1]
    ax.bar([r["round"] for r in rounds], [(r["bytes_down"] + r["bytes_up"]) / 1e6 for r in rounds], color="tab:gray")
    ax.set_xlabel("round"), ax.set_ylabel("MB (both ways)"), ax.set_title("bytes on the wire")
    fig.tight_layout()
    src = png(fig)
    plt.close(fig)
    return src
