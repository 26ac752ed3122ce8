"""The run report: one self-contained HTML file rendered from the run's files and its ledger events.

Nothing in the report comes from memory: metrics as the ledger's ``step.finished`` events recorded them
(``metrics.json`` is compared with them and any difference is shown as an alteration), configs and artifacts from the
ledger events of the run, plots drawn from those. The report prints the ledger head it was generated
from, so a later rewrite of the chain is detectable against it (``nnforge ledger verify --head``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnforge import runs
from nnforge.errors import IntegrityError, MissingDependencyError
from nnforge.ledger import Event, Ledger, Verification, atomic_write_text, json_safe

__all__ = ["render_report", "write_report", "write_checked_report", "RenderedReport", "recorded_metrics"]

_FIGURE_ROWS = [
    ("accuracy", "acc", "{:.3f}"), ("macro-F1", "macro_f1", "{:.3f}"), ("batch-1 latency p50 (ms)", "latency_b1_ms", "{:.2f}"),
    ("batch-1 latency p95 (ms)", "latency_b1_p95_ms", "{:.2f}"), ("batch-32 throughput (texts/s)", "throughput_b32", "{:.1f}"),
    ("size on disk (MB)", "size_mb", "{:.1f}"), ("memory to serve, weights + activations (MB)", "peak_memory_mb", "{:.1f}"),
    ("embedding cosine to fp32, mean", "cos_mean", "{:.5f}"), ("embedding cosine to fp32, min", "cos_min", "{:.5f}"),
    ("prediction agreement with fp32", "agreement", "{:.3f}"),
]


def _scaled(value: Any, factor: float) -> Any:
    return value * factor if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def training_energy(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """The training steps' energy readings (``train``, ``qat``, ``finetune`` sections), for the report."""
    return [{"step": name, **s["energy"]} for name, s in sections.items()
            if isinstance(s, dict) and isinstance(s.get("energy"), dict) and "joules" in s["energy"]]


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(metrics: dict[str, Any], sections: dict[str, Any], variants: list[str]) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    hist = sections.get("finetune", {}).get("history", [])
    if hist:
        fig, ax = plt.subplots(figsize=(5, 3))
        ep = [h["epoch"] for h in hist]
        ax.plot(ep, [float("nan") if h["train_loss"] is None else h["train_loss"] for h in hist], "o-",
                label="train loss")
        ax2 = ax.twinx()
        ax2.plot(ep, [h["val_acc"] for h in hist], "s--", color="tab:orange", label="val accuracy")
        ax.set_xlabel("epoch"), ax.set_ylabel("train loss"), ax2.set_ylabel("validation accuracy")
        ax.set_title("fine-tuning")
        out.append(("Fine-tuning curve", _png(fig)))
        plt.close(fig)
    bars = [(v, metrics.get(f"{v}_acc")) for v in variants]
    base = [("majority", metrics.get("baseline_majority_acc")), ("logreg", metrics.get("baseline_logreg_acc"))]
    rows = [(k, x) for k, x in base + bars if isinstance(x, (int, float))]
    if rows:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar([k for k, _ in rows], [x for _, x in rows], color="tab:blue")
        ax.set_ylabel("test accuracy"), ax.set_ylim(0, 1), ax.set_title("accuracy")
        out.append(("Accuracy", _png(fig)))
        plt.close(fig)
    cost = [(v, metrics.get(f"{v}_size_mb"), metrics.get(f"{v}_latency_b1_ms")) for v in variants]
    cost = [c for c in cost if isinstance(c[1], (int, float)) and isinstance(c[2], (int, float))]
    if cost:
        fig, axes = plt.subplots(1, 2, figsize=(7, 3))
        axes[0].bar([c[0] for c in cost], [c[1] for c in cost], color="tab:green")
        axes[0].set_title("size on disk (MB)")
        axes[1].bar([c[0] for c in cost], [c[2] for c in cost], color="tab:red")
        axes[1].set_title("batch-1 latency (ms)")
        out.append(("Size and latency", _png(fig)))
        plt.close(fig)
    for variant, cal in sections.get("calibration", {}).items():
        diagrams = cal.get("reliability") if isinstance(cal, dict) else None
        if not diagrams:
            continue
        fig, axes = plt.subplots(1, len(diagrams), figsize=(3.2 * len(diagrams), 3), squeeze=False)
        for ax, (name, d) in zip(axes[0], diagrams.items(), strict=True):
            edges = d["bin_edges"]
            mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
            width = edges[1] - edges[0]
            acc = [a if a is not None else 0.0 for a in d["accuracy"]]
            ax.bar(mids, acc, width=width * 0.9, color="tab:blue", label="accuracy")
            ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
            ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.set_xlabel("confidence")
            ax.set_title(f"{name} temperature scaling (ECE {d['ece']:.3f})", fontsize=9)
        axes[0][0].set_ylabel("accuracy"), axes[0][0].legend(fontsize=7, loc="upper left")
        out.append((f"Reliability diagram, {variant} (test split)", _png(fig)))
        plt.close(fig)
    return out


def _fmt(value: Any, pattern: str) -> str:
    if isinstance(value, (int, float)):
        return pattern.format(value)
    return "—"


def recorded_metrics(run_dir: Path, events: list[Event]) -> tuple[dict[str, Any], list[str]]:
    """The run's metrics as its ``step.finished`` events recorded them, and the names of those that the run's
    ``metrics.json`` shows otherwise (the file was edited; the recorded value is the one reported)."""
    try:
        on_disk = runs.read_metrics(run_dir)
    except IntegrityError:  # a damaged file: every recorded figure shows as altered
        on_disk = {}
    recorded: dict[str, Any] = {}
    for e in events:
        if e.kind == "step.finished" and isinstance(e.data.get("metrics"), dict):
            recorded.update(e.data["metrics"])
    file_view = json_safe(on_disk)
    altered = sorted(k for k in set(file_view) | set(recorded) if file_view.get(k) != recorded.get(k))
    return recorded, altered


def _num(value: Any, pattern: str = "{:.3f}") -> str | None:
    return pattern.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def probe_sentence(metrics: dict[str, Any]) -> str | None:
    """Whether fine-tuning beat the linear probe its head started from (``finetune_beats_probe``), in words."""
    if "finetune_beats_probe" not in metrics:
        return None
    gain, ci = _num(metrics.get("finetune_probe_gain"), "{:+.3f}"), metrics.get("finetune_probe_gain_ci")
    interval = (f" (95% interval {_num(ci[0], '{:+.3f}')} to {_num(ci[1], '{:+.3f}')})"
                if isinstance(ci, list) and len(ci) == 2 and None not in (_num(ci[0]), _num(ci[1])) else "")
    measured = f"accuracy gain {gain}{interval}" if gain is not None else "gain not recorded"
    if metrics["finetune_beats_probe"] is True:
        return f"Fine-tuning beat the linear probe its head started from: {measured}."
    return (f"Fine-tuning did NOT beat the linear probe its head started from: {measured}; the fine-tuned model "
            "is no better than the cheaper probe on these test items.")


def summary_paragraph(config: dict[str, Any], metrics: dict[str, Any], status: str, altered: list[str],
                      suites: list[Event]) -> str:
    """One paragraph on what the run is and what it measured, from the recorded metrics and events only."""
    recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
    final = config.get("final_variant")
    parts = [f"Run {config.get('run_id', '?')} of recipe '{(recipe or {}).get('name', '?')}' {status}."]
    if status != "finished":
        parts.append("Its figures are what it recorded before it stopped; its model did not complete the recipe.")
    acc = _num(metrics.get(f"{final}_acc")) if final else None
    if acc is not None:
        others = [f"{v} {a}" for v in config.get("variants", {}) if v != final and (a := _num(metrics.get(f"{v}_acc")))]
        parts.append(f"The final variant ({final}) scores test accuracy {acc}"
                     + (f" ({', '.join(others)})" if others else "") + ".")
    baselines = {k[len("baseline_"):-len("_acc")]: v for k, v in metrics.items()
                 if k.startswith("baseline_") and k.endswith("_acc") and _num(v) is not None}
    if baselines:
        best = max(baselines, key=lambda k: baselines[k])
        parts.append(f"The best baseline ({best}) scores {_num(baselines[best])}.")
    probe = probe_sentence(metrics)
    if probe:
        parts.append(probe)
    gain, ci = _num(metrics.get("finetune_gain"), "{:+.3f}"), metrics.get("finetune_gain_ci")
    if gain is not None:
        interval = (f" (95% interval {_num(ci[0], '{:+.3f}')} to {_num(ci[1], '{:+.3f}')})"
                    if isinstance(ci, list) and len(ci) == 2 and None not in (_num(ci[0]), _num(ci[1])) else "")
        parts.append(f"Against the frozen-embedding logistic regression, fine-tuning changes accuracy by {gain}"
                     f"{interval}.")
    for e in suites:
        verdict = "passed" if e.data.get("passed") else "FAILED (" + ", ".join(map(str, e.data.get("failed") or [])) + ")"
        parts.append(f"Regression suite {e.data.get('suite')} on {e.data.get('variant')} {verdict}.")
    size = _num(metrics.get(f"{final}_size_mb"), "{:.1f}") if final else None
    if size is not None:
        parts.append(f"It takes {size} MB on disk.")
    if altered:
        parts.append(f"metrics.json differs from the record ({', '.join(altered[:5])}): recorded values are shown.")
    return " ".join(parts)


def _confusion(events: list[Event], sections: dict[str, Any]) -> dict[str, Any]:
    """The confusion matrices as the evaluate step recorded them in its ledger event (else from sections.json)."""
    for e in reversed(events):
        recorded = (e.data.get("details") or {}).get("confusion") if e.kind == "step.finished" else None
        if isinstance(recorded, dict) and recorded:
            return recorded
    found = sections.get("confusion")
    return found if isinstance(found, dict) else {}


@dataclass(frozen=True)
class RenderedReport:
    """A report and the two warnings it carries: the chain's verification and the metrics altered on disk."""

    html: str
    verification: Verification
    altered: list[str]


def render_report(run_dir: str | Path, ledger: Ledger) -> str:
    """The HTML report of the run in ``run_dir``, from its files and its ledger events."""
    return _render(run_dir, ledger).html


def _render(run_dir: str | Path, ledger: Ledger) -> RenderedReport:
    try:
        import jinja2
    except ImportError as exc:
        raise MissingDependencyError("reports need jinja2 and matplotlib: pip install 'nnforge[report]'") from exc
    run_dir = Path(run_dir)
    config = runs.read_config(run_dir)
    sections = runs.read_sections(run_dir)
    run_id = config.get("run_id", run_dir.name)
    events = ledger.run_events(run_id)
    verification = ledger.verify()
    metrics, altered = recorded_metrics(run_dir, events)
    variants = runs.with_runtime_columns(list(config.get("variants", {})), metrics)
    energy = sections.get("energy") or {}
    rows = [*_FIGURE_ROWS, (f"energy per batch-1 inference (mJ; {energy.get('label', 'how: not recorded')})",
                            "energy_j_per_inference", "{:.3g}")]
    scale = {"energy_j_per_inference": 1e3}  # recorded in joules, shown in millijoules
    table = [(label, [_fmt(_scaled(metrics.get(f"{v}_{key}"), scale.get(key, 1.0)), pat) for v in variants])
             for label, key, pat in rows if any(f"{v}_{key}" in metrics for v in variants)]
    steps = [e for e in events if e.kind in ("step.started", "step.finished", "step.failed")]
    from nnforge.govern._report_cascade import cascade_section
    from nnforge.govern._report_federated import federated_section
    from nnforge.govern._report_moe import moe_section
    from nnforge.govern._report_prune import prune_sections
    from nnforge.govern._report_search import search_sections
    from nnforge.govern._report_serve import serve_section
    from nnforge.govern.integrity import run_status

    status = run_status(events, config)
    suites = [e for e in events if e.kind == "suite.evaluated"]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.get_template("report.html.j2").render(
        run_id=run_id, config=config, metrics=metrics, sections=sections, variants=variants, table=table,
        plots=_plots(metrics, sections, variants), steps=steps, events=events,
        artifacts=[e for e in events if e.kind == "artifact.written"], verification=verification,
        head=ledger.head(), ledger_location=ledger.location,
        failure=next((str(e.data.get("error", "")) for e in events if e.kind == "run.failed"), None),
        altered=altered, status=status, confusion=_confusion(events, sections),
        pruning=prune_sections(events, _png), searches=search_sections(events, _png),
        training_energy=training_energy(sections), moe=moe_section(sections, events, _png),
        federated=federated_section(sections, events, _png), serving=serve_section(events),
        cascades=cascade_section(events),
        summary=summary_paragraph(config, metrics, status, altered, suites), probe=probe_sentence(metrics),
        generated=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        json=lambda o: json.dumps(o, indent=1, sort_keys=True, default=str),
        fmt=_fmt,
    )
    return RenderedReport(html, verification, altered)


def write_report(run_dir: str | Path, ledger: Ledger) -> Path:
    """Render and atomically write ``report.html`` into the run folder."""
    return write_checked_report(run_dir, ledger)[0]


def write_checked_report(run_dir: str | Path, ledger: Ledger) -> tuple[Path, RenderedReport]:
    """:func:`write_report`, also returning what the report found (verification, altered metrics)."""
    path = Path(run_dir) / "report.html"
    rendered = _render(run_dir, ledger)
    atomic_write_text(path, rendered.html)
    return path, rendered
