"""Search on Optuna: hyperparameters, architectures and compression plans against measured hardware objectives."""

from __future__ import annotations

__all__: list[str] = []
