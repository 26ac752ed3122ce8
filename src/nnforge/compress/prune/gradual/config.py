"""Config of gradual pruning during training: Zhu & Gupta's cubic schedule, by magnitude or by movement."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError

__all__ = ["GradualPruneConfig"]


@config_type("gradual_prune")
class GradualPruneConfig(Config):
    """Prune while training: every ``every`` optimizer steps from ``start_step`` to ``end_step`` the sparsity
    rises along Zhu & Gupta's cubic schedule (2017, "To prune, or not to prune")

        s_t = final + (initial - final) * (1 - (t - start_step) / (end_step - start_step))³

    and the training steps between two pruning events, and after ``end_step``, are the recovery training.
    Pruned weights stay zero (masks only grow).

    Args:
        criterion: ``magnitude`` drops the smallest ``|w|``; ``movement`` drops the weights moving towards zero,
            the lowest accumulated ``-Σ_t w · ∂L/∂w`` (Sanh et al. 2020, "Movement Pruning"), which suits
            fine-tuning a pretrained model.
        modules / skip: the layer types pruned (Linear, Conv2d) and the names left dense (exact, or a prefix
            ending in ``.``).
        scope: ``layer`` gives every layer the schedule's sparsity; ``global`` ranks all pruned weights together.
    """

    final_sparsity: float = Field(0.8, gt=0.0, lt=1.0)
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    start_step: int = Field(0, ge=0)
    end_step: int = Field(1000, ge=1)
    every: int = Field(100, ge=1, description="optimizer steps between two pruning events (Δt)")
    criterion: Literal["magnitude", "movement"] = "magnitude"
    scope: Literal["layer", "global"] = "layer"
    modules: tuple[Literal["linear", "conv"], ...] = ("linear",)
    skip: tuple[str, ...] = Field(default_factory=tuple)

    @model_validator(mode="after")
    def _check(self) -> GradualPruneConfig:
        if self.end_step <= self.start_step:
            raise ConfigError(f"The 'end_step' parameter of GradualPruneConfig must be larger than start_step "
                              f"({self.start_step}). Got {self.end_step} instead.")
        if self.initial_sparsity > self.final_sparsity:
            raise ConfigError(f"The 'initial_sparsity' parameter of GradualPruneConfig must be at most final_sparsity "
                              f"({self.final_sparsity}). Got {self.initial_sparsity} instead.")
        return self
