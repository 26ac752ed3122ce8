"""The one door to Flower (``flwr``): imported lazily, with its telemetry off and its logging quiet.

Flower reports usage events to its developers unless ``FLWR_TELEMETRY_ENABLED=0``; a privacy tool must not phone
home, so that is set before the first import (a user who set it keeps their value).
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

from nnforge.errors import MissingDependencyError

__all__ = ["flwr", "require"]


def require(module: str = "flwr") -> ModuleType:
    """Import ``module`` (``flwr``, ``flwr.app``, …) or raise naming the extra that installs it."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"federated learning needs Flower ({module}): pip install 'nnforge[federated]'"
                                     ) from exc
    logging.getLogger("flwr").setLevel(logging.ERROR)  # its deprecation and "evaluation skipped" notices
    return mod


def flwr() -> Any:
    """The ``flwr`` package (after :func:`require`)."""
    return require("flwr")
