"""Config of gradual pruning during training: Zhu & Gupta's cubic schedule, by magnitude or by movement."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

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

    With ``n`` and ``m`` (2:4, 4:8) the schedule ends in that N:M pattern: ``final_sparsity`` is ``1 - n/m``
    (set from them when left out), and every pruning event drops the lowest-scoring weights of each layer
    with at most ``m - n`` of every ``m`` consecutive inputs of a row gone, so the last event leaves exactly
    ``n`` of every ``m`` (the pattern the 2:4 sparse kernels store) while the earlier ones are finer-grained.

    Args:
        criterion: ``magnitude`` drops the smallest ``|w|``; ``movement`` drops the weights moving towards zero,
            the lowest accumulated ``-Σ_t w · ∂L/∂w`` (Sanh et al. 2020, "Movement Pruning"), which suits
            fine-tuning a pretrained model.
        modules / skip: the layer types pruned (Linear, Conv2d) and the names left dense (exact, or a prefix
            ending in ``.``).
        scope: ``layer`` gives every layer the schedule's sparsity; ``global`` ranks all pruned weights together.
        n / m: end in an N:M pattern (both or neither); a layer whose inputs are not a multiple of ``m`` is
            left dense and listed as skipped.

    A pruning config of its own (type ``gradual_prune``): ``prune_(model, config, train=...)`` prunes while
    ``train(model, callbacks)`` trains, and the ``prune`` recipe step runs it during its ``recovery`` training.
    """

    prunes_during_training: ClassVar[bool] = True  # the prune step trains with it instead of pruning first

    final_sparsity: float = Field(0.8, gt=0.0, lt=1.0)
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    start_step: int = Field(0, ge=0)
    end_step: int = Field(1000, ge=1)
    every: int = Field(100, ge=1, description="optimizer steps between two pruning events (Δt)")
    criterion: Literal["magnitude", "movement"] = "magnitude"
    scope: Literal["layer", "global"] = "layer"
    modules: tuple[Literal["linear", "conv"], ...] = ("linear",)
    skip: tuple[str, ...] = Field(default_factory=tuple)
    n: int | None = Field(None, ge=1)
    m: int | None = Field(None, ge=2)

    @model_validator(mode="before")
    @classmethod
    def _nm_sparsity(cls, data: Any) -> Any:
        """An N:M schedule ends at ``1 - n/m``: the final sparsity is set from the pattern when not given."""
        if isinstance(data, dict) and isinstance(data.get("n"), int) and isinstance(data.get("m"), int) \
                and data.get("final_sparsity") is None and 0 < data["n"] < data["m"]:
            return {**data, "final_sparsity": 1.0 - data["n"] / data["m"]}
        return data

    @model_validator(mode="after")
    def _check(self) -> GradualPruneConfig:
        if self.end_step <= self.start_step:
            raise ConfigError(f"The 'end_step' parameter of GradualPruneConfig must be larger than start_step "
                              f"({self.start_step}). Got {self.end_step} instead.")
        if self.initial_sparsity > self.final_sparsity:
            raise ConfigError(f"The 'initial_sparsity' parameter of GradualPruneConfig must be at most final_sparsity "
                              f"({self.final_sparsity}). Got {self.initial_sparsity} instead.")
        if (self.n is None) != (self.m is None):
            raise ConfigError(f"GradualPruneConfig: an N:M schedule needs both 'n' and 'm' (e.g. n=2, m=4). "
                              f"Got n={self.n}, m={self.m} instead.")
        if self.n is not None and self.m is not None:
            if self.n >= self.m:
                raise ConfigError(f"The 'n' parameter of GradualPruneConfig must be smaller than 'm' ({self.m}). "
                                  f"Got {self.n} instead.")
            if abs(self.final_sparsity - (1.0 - self.n / self.m)) > 1e-9:
                raise ConfigError(f"The 'final_sparsity' parameter of GradualPruneConfig must be 1 - n/m = "
                                  f"{1.0 - self.n / self.m} for an {self.n}:{self.m} schedule (or left out). "
                                  f"Got {self.final_sparsity} instead.")
        return self

    @property
    def pattern(self) -> str:
        """``"2:4"`` style for an N:M schedule, else ``"unstructured"``."""
        return f"{self.n}:{self.m}" if self.n is not None else "unstructured"
