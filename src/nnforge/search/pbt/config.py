"""``PBTConfig``: the population, its ready points and how members exploit and explore."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from nnforge.config import Config, config_type
from nnforge.search._space import Param, check_space
from nnforge.train import TrainConfig

__all__ = ["PBTConfig"]

# set by PBT itself in each member's TrainConfig: a base config's values for them are replaced
MANAGED_TRAIN_FIELDS = ("max_steps", "checkpoint_dir", "checkpoint_every", "seed", "early_stopping")


@config_type("search.pbt")
class PBTConfig(Config):
    """Population-based training (Jaderberg et al. 2017), synchronous rounds on the one training loop.

    ``population`` members start from hyperparameters sampled from ``space`` and train ``interval_steps`` at a
    time up to ``total_steps``. At each ready point (every ``interval_steps``, not at the end) the members are
    ranked by the evaluation ``metric``; each member in the bottom ``quantile`` copies the newest checkpoint
    (weights, optimizer and schedule state) of a member drawn from the top ``quantile`` (*exploit*) and then
    changes the copied hyperparameters (*explore*): each one is resampled from ``space`` with probability
    ``resample_probability``, otherwise multiplied by one of ``perturb_factors`` (floats and ints, clipped to
    the parameter's range; a categorical one is kept).

    ``space`` keys are hyperparameters: :class:`~nnforge.train.TrainConfig` fields (``lr``, ``weight_decay``,
    ``clip_norm``, …) go into each member's training config; any other name (``momentum``, ``eps``) is set in
    every optimizer param group that has it, after each resume. ``train`` holds the rest of the training
    options; PBT sets ``max_steps`` (= ``total_steps``), the checkpoint folder and each member's ``seed``
    (``seed`` + member index) itself.
    """

    space: dict[str, Param]
    population: int = Field(8, ge=2)
    interval_steps: int = Field(100, ge=1)
    total_steps: int = Field(1000, ge=1)
    metric: str = "loss"
    direction: Literal["minimize", "maximize"] = "minimize"
    quantile: float = Field(0.25, gt=0, le=0.5)
    perturb_factors: list[float] = Field(default_factory=lambda: [0.8, 1.2], min_length=1)
    resample_probability: float = Field(0.25, ge=0, le=1)
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> PBTConfig:
        check_space(self.space, where="space")
        if any(f <= 0 for f in self.perturb_factors):
            raise ValueError(f"perturb_factors must all be > 0. Got {self.perturb_factors}")
        if self.interval_steps > self.total_steps:
            raise ValueError(f"interval_steps ({self.interval_steps}) must be <= total_steps ({self.total_steps})")
        if self.train.warmup_steps > self.total_steps:
            raise ValueError(f"train.warmup_steps ({self.train.warmup_steps}) must be <= total_steps "
                             f"({self.total_steps})")
        return self

    @property
    def ready_steps(self) -> list[int]:
        """The steps at which members stop, are evaluated and checkpointed (the last is ``total_steps``)."""
        steps = list(range(self.interval_steps, self.total_steps, self.interval_steps))
        return [*steps, self.total_steps]
