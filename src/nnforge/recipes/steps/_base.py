"""What a step is, what it sees (:class:`RunContext`) and what it returns (:class:`StepResult`).

A step is a small class registered in :data:`STEPS` with a ``Config`` (validated options) and
``run(ctx, config) -> StepResult``. It reads what earlier steps left in the context (the current
model, named model variants, metrics, artifacts), does one thing through library calls, writes its
artifacts with :meth:`RunContext.save_model` / :meth:`RunContext.write_json` (atomic, hashed into the
ledger) and returns its metrics. Steps never reach into each other's internals.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from nnforge import runs
from nnforge.config import Config
from nnforge.ledger import Ledger, atomic_write_text, file_sha256
from nnforge.registry import Registry

__all__ = ["Step", "STEPS", "RunContext", "StepResult", "ProgressFn", "NoOptions"]

ProgressFn = Callable[[str, int, int], None]


class NoOptions(Config):
    """A step without options."""


@dataclass
class StepResult:
    """Metrics (flat name → number) and artifacts (name → path) produced by a step."""

    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Step(Protocol):
    """A registered step: ``Config`` validates its options, ``run`` does its one thing."""

    name: ClassVar[str]
    Config: ClassVar[type[Config]]
    description: ClassVar[str]

    def run(self, ctx: RunContext, config: Any) -> StepResult: ...


STEPS: Registry[type[Step]] = Registry("step")


@dataclass
class RunContext:
    """Everything a step may read or extend while a recipe runs."""

    run_id: str
    run_dir: Path
    recipe: Any  # nnforge.recipes.schema.Recipe
    ledger: Ledger
    seed: int
    data: Any
    model: Any
    model_spec: dict[str, Any]
    variants: dict[str, Any] = field(default_factory=dict)  # name → model (e.g. "fp32", "int8")
    variant_specs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → how to rebuild it
    variant_files: dict[str, str] = field(default_factory=dict)  # name → weights file
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)  # report sections contributed by steps
    shared: dict[str, Any] = field(default_factory=dict)  # in-memory results later steps may reuse
    progress: ProgressFn | None = None

    def flush(self, status: str | None = None) -> None:
        """Write ``metrics.json``, ``sections.json`` and the variants and artifacts in ``config.json`` (each
        atomically, through :mod:`nnforge.runs`); ``status`` also sets the run's status."""
        runs.write_metrics(self.run_dir, self.metrics)
        runs.write_sections(self.run_dir, self.sections)
        extra = {"status": status} if status is not None else {}
        runs.update_config(self.run_dir, variants=dict(self.variant_files),
                           final_variant=next(reversed(self.variant_files), None), artifacts=dict(self.artifacts),
                           **extra)

    def record_file(self, name: str, path: str | Path) -> str:
        """Hash a written file into the ledger and remember it as an artifact; returns its sha256."""
        digest = file_sha256(path)
        rel = str(Path(path).relative_to(self.run_dir)) if Path(path).is_relative_to(self.run_dir) else str(path)
        self.artifacts[name] = rel
        self.ledger.append("artifact.written", {"name": name, "path": rel, "sha256": digest,
                                                "bytes": Path(path).stat().st_size}, run=self.run_id)
        return digest

    def write_json(self, name: str, filename: str, obj: Any) -> Path:
        path = self.run_dir / filename
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        self.record_file(name, path)
        return path

    def save_model(self, variant: str, model: Any, spec: dict[str, Any]) -> Path:
        """Save a model variant's weights as safetensors (atomically) with the spec needed to rebuild it."""
        from nnforge.models.checkpoint import save_weights

        filename = "model.safetensors" if variant == "fp32" else f"model-{variant}.safetensors"
        path = self.run_dir / filename
        save_weights(model, path, spec)
        self.variants[variant] = model
        self.variant_specs[variant] = spec
        self.variant_files[variant] = filename
        self.record_file(f"model:{variant}", path)
        return path
