"""What a step is, what it sees (:class:`RunContext`) and what it returns (:class:`StepResult`).

A step is a small class registered in :data:`STEPS` with a ``Config`` (validated options) and
``run(ctx, config) -> StepResult``. It reads what earlier steps left in the context (the current
model, named model variants, metrics, artifacts), does one thing through library calls, writes its
artifacts with :meth:`RunContext.save_model` / :meth:`RunContext.write_json` (atomic, hashed into the
ledger) and returns its metrics. Steps never reach into each other's internals.

Before anything is written, the runner loads the data, builds the model and calls each step's optional
``preflight(plan: Preflight, config) -> None``, which checks what it can against the data and the model
(split names, layer indices, module names, the model's task) and raises
:class:`~nnforge.errors.ConfigError` or :class:`~nnforge.errors.DataError`. A problem found there creates no
run folder and no ledger event (exit 2 in the CLI). ``preflight`` must not change the model or the data, and
must be cheap (no training, no forward pass over the whole dataset).
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

__all__ = ["Step", "STEPS", "RunContext", "StepResult", "ProgressFn", "NoOptions", "Preflight", "run_preflight",
           "EVAL_REPORTERS"]

EVAL_REPORTERS = "eval_reporters"
"""``ctx.shared`` key: ``report(step, metrics) -> stop`` functions that a step with its own evaluation loop (the
``finetune`` step, per epoch) calls after each evaluation, and stops training when one returns True (a search
trial's pruner: :meth:`nnforge.search.TrialContext.eval_reporter`). ``fit``-based steps take callbacks instead
(``TRAIN_CALLBACKS``)."""

ProgressFn = Callable[[str, int, int], None]


class NoOptions(Config):
    """A step without options."""


@dataclass
class StepResult:
    """Metrics (flat name → number) and artifacts (name → path) produced by a step."""

    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Preflight:
    """What a step's ``preflight`` may check its options against, before the run folder exists.

    ``splits`` is what steps will read from ``ctx.data`` (text splits by role, or ``{"dataset": …}``);
    ``model`` is the base model as built (not yet trained: read it, never change it); ``task`` is what the
    model does as its registry says (``"text-classification"``, ``"array-classification"``, ``"char-lm"``, …),
    or ``None`` when unknown.
    """

    recipe: Any  # nnforge.recipes.schema.Recipe
    splits: dict[str, Any]
    dataset: Any
    model: Any
    task: str | None


def run_preflight(plan: Preflight, steps: Any) -> None:
    """Call the ``preflight`` of every step that has one, in order; the first problem stops (raised as is).

    ``steps`` are the recipe's :class:`~nnforge.recipes.schema.StepSpec` s; a problem is prefixed with the
    step's position (``steps[2] (finetune): …``) so that the user knows which entry to fix.
    """
    from nnforge.errors import NnforgeError

    for i, step in enumerate(steps):
        check = getattr(STEPS.get(step.name), "preflight", None)
        if check is None:
            continue
        try:
            check(STEPS.get(step.name)(), plan, step.config)
        except NnforgeError as exc:
            exc.args = (f"steps[{i}] ({step.name}): {exc}", *exc.args[1:])
            raise


class Step(Protocol):
    """A registered step: ``Config`` validates its options, ``run`` does its one thing.

    A step may also define ``preflight(self, plan: Preflight, config) -> None`` (see the module docstring):
    it raises ConfigError or DataError for an option the data or the model cannot satisfy, before any run
    folder or ledger event exists.
    """

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
        self.variant_files.pop(variant, None)  # saved again (a train step after upcycling): now the latest, the final
        self.variants[variant] = model
        self.variant_specs[variant] = spec
        self.variant_files[variant] = filename
        self.record_file(f"model:{variant}", path)
        return path
