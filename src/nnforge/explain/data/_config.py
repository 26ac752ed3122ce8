"""Options of :func:`~nnforge.explain.attribute_data` and :func:`~nnforge.explain.self_influence`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from nnforge.config import Config, config_type
from nnforge.explain.data._registry import DATA_ATTRIBUTORS

__all__ = ["DataAttributionConfig", "TRAK_DEFAULT_PROJ_DIM"]

TRAK_DEFAULT_PROJ_DIM = 2048  # traker's default projection dimension


@config_type("explain.data-attribution")
class DataAttributionConfig(Config):
    """How to attribute a model's predictions to its training examples.

    ``method`` names a registered method (``"tracin"``, ``"trak"``). ``parameters`` are glob patterns of the
    parameter names whose gradients are used (e.g. ``("head.*",)`` for the last layer of a large model; empty:
    every trainable parameter). ``proj_dim`` projects those gradients to this many dimensions with a seeded
    random ``projection``; None takes the method's default: TRAK 2048, TracIn the exact gradients.
    ``damping`` (TRAK) adds ``damping × mean diagonal of ΦᵀΦ`` to the kernel before inverting it, which keeps
    the inverse finite when there are fewer examples than dimensions; ``reweight`` (TRAK) multiplies each
    training example's score by ``1 − p`` of its target (the paper's Q). ``batch_size`` examples share one
    vectorised gradient computation (memory grows with it).
    """

    method: str = "trak"
    parameters: tuple[str, ...] = Field((), description="glob patterns of parameter names; empty: all trainable")
    proj_dim: int | None = Field(None, ge=1, description="projected dimensions; None: TRAK 2048, TracIn exact")
    projection: Literal["rademacher", "gaussian"] = "rademacher"
    damping: float = Field(0.01, ge=0, description="TRAK: ridge, relative to the mean diagonal of ΦᵀΦ")
    reweight: bool = Field(True, description="TRAK: multiply by 1 - p of the training example's target")
    batch_size: int = Field(64, ge=1, description="examples per vectorised gradient chunk")
    seed: int = Field(0, ge=0, description="seed of the random projection")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        DATA_ATTRIBUTORS.get(value, where="DataAttributionConfig.method")  # did-you-mean on a typo
        return value
