"""Options of :func:`nnforge.train.fit`: one validated, frozen config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from nnforge.config import Config, config_type

__all__ = ["TrainConfig", "EarlyStopping"]


@config_type("train.early-stopping")
class EarlyStopping(Config):
    """Stop when the evaluation metric ``metric`` has not improved by ``min_delta`` for ``patience`` evaluations.

    ``metric`` names a key of the evaluation metrics (``"loss"`` always exists; a ``metric_fn`` may add
    more, e.g. ``"accuracy"`` with ``mode="max"``).
    """

    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"


@config_type("train")
class TrainConfig(Config):
    """Options of the training loop.

    The learning rate of each parameter group is its own ``lr`` times the schedule's factor:
    ``constant`` (after a linear warm-up), ``cosine`` (warm-up, then cosine down to ``min_lr_ratio``), or
    ``wsd`` (warm-up, stable, then a linear decay to ``min_lr_ratio`` over the last ``decay_fraction`` of
    the steps). ``lr`` and ``weight_decay`` configure the default optimizer (AdamW) only.
    """

    max_steps: int = Field(1000, ge=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    clip_norm: float | None = Field(1.0, gt=0, description="max global grad norm; None: no clipping")
    schedule: Literal["constant", "cosine", "wsd"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd only: share of steps spent decaying")
    bf16: bool = Field(False, description="run forward passes under bfloat16 autocast (CPU or GPU)")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    eval_every: int | None = Field(None, ge=1, description="evaluate every N steps (and at the end)")
    eval_batches: int | None = Field(None, ge=1, description="evaluate on the first N eval batches; None: all")
    early_stopping: EarlyStopping | None = None
    checkpoint_every: int | None = Field(None, ge=1)
    checkpoint_dir: str | None = None
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept in checkpoint_dir")
    log_every: int = Field(10, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check_consistency(self) -> TrainConfig:
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every is set but checkpoint_dir is not; give a folder to write to")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be <= max_steps ({self.max_steps})")
        if self.early_stopping is not None and self.eval_every is None:
            raise ValueError("early_stopping needs eval_every (and eval_data passed to fit)")
        return self
