"""nnforge: make neural networks small, fast, private and accountable.

The public API. Importing ``nnforge`` imports no optional dependency (transformers, peft, onnx,
matplotlib, …): they load when a feature that needs them is used.

>>> import nnforge
>>> run = nnforge.load_run("runs/<run-id>")  # doctest: +SKIP
>>> run.predict(["O, that this too too solid flesh would melt"])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nnforge.errors import (
    ConfigError,
    DataError,
    IntegrityError,
    MissingDependencyError,
    ModelError,
    NnforgeError,
    StepFailedError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "NnforgeError",
    "ConfigError",
    "DataError",
    "IntegrityError",
    "ModelError",
    "MissingDependencyError",
    "StepFailedError",
    "load_run",
    "load_recipe",
    "run_recipe",
    "Ledger",
]

if TYPE_CHECKING:
    from nnforge.ledger import Ledger
    from nnforge.recipes import load_recipe, load_run, run_recipe

_LAZY = {"load_run": "nnforge.recipes", "load_recipe": "nnforge.recipes", "run_recipe": "nnforge.recipes",
         "Ledger": "nnforge.ledger"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nnforge' has no attribute {name!r}")
