"""How :func:`~nnforge.explain.attribution.attribute` explains a prediction."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from nnforge.config import Config, config_type

__all__ = ["AttributionConfig"]


@config_type("explain.attribution")
class AttributionConfig(Config):
    """Which attribution method, for which output, with which settings.

    ``target``: the class (or, for a char-LM, the next character) whose score is explained; ``None`` explains
    the predicted one. ``output``: ``logit`` explains the raw score (integrated gradients' completeness is
    exact for it), ``probability`` the softmax probability.

    Integrated gradients checks its own completeness (attributions sum to f(x) − f(baseline)) and doubles its
    steps until the relative error is at most ``tolerance`` or ``max_steps`` is reached; the error reached is
    reported with every explanation.
    """

    method: str = Field("integrated_gradients", description="a registered method (ATTRIBUTION_METHODS)")
    target: int | None = Field(None, ge=0, description="class index to explain (None: the predicted class)")
    output: Literal["logit", "probability"] = "logit"
    n_steps: int = Field(64, ge=2, le=4096, description="integration steps to start with (integrated gradients)")
    max_steps: int = Field(1024, ge=2, le=16384, description="most integration steps when refining")
    tolerance: float = Field(0.01, gt=0, le=1, description="relative completeness error to reach (IG)")
    internal_batch_size: int = Field(64, ge=1, description="interpolation points per forward pass")
    window: int = Field(2, ge=1, le=64, description="occlusion window (pixels per side) for images")
    activations: Literal["float", "as-deployed"] = Field(
        "float", description="quantized layers that round their inputs are explained through their float-activation "
                             "twin (same weights; rounding makes gradients meaningless); as-deployed: as they run")
    layer: str | None = Field(None, description="module name for layer attribution (None: a sensible default "
                                                "per family: the last encoder layer / the last conv block)")

    @field_validator("method")
    @classmethod
    def _known(cls, v: str) -> str:
        from nnforge.explain.attribution._registry import ATTRIBUTION_METHODS

        ATTRIBUTION_METHODS.get(v, where="AttributionConfig.method")
        return v
