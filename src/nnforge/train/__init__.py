"""The training loop: one loop, readable top to bottom, extended through named events.

    from nnforge.train import TensorBatches, TrainConfig, accuracy, fit

    config = TrainConfig(max_steps=400, lr=3e-3, schedule="cosine", warmup_steps=20, eval_every=100,
                         checkpoint_every=100, checkpoint_dir="runs/digits/ckpt")
    result = fit(model, TensorBatches(x_train, y_train, batch_size=64), config=config,
                 eval_data=TensorBatches(x_test, y_test, batch_size=256, shuffle=False), metric_fn=accuracy)

See :class:`Event` for the loop as pseudocode and ``docs/train.md`` for the guide (resume, torchrun).
"""

from __future__ import annotations

from nnforge.train._averaging import WeightAverage
from nnforge.train._batches import TensorBatches, shard_batch
from nnforge.train._checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from nnforge.train._config import EarlyStopping, TrainConfig
from nnforge.train._events import Callback, CallbackFn, Event, TrainState, on
from nnforge.train._hessian import hessian_refresh
from nnforge.train._loop import TrainingDivergedError, TrainResult, accuracy, default_loss, fit
from nnforge.train._progress import ProgressBar
from nnforge.train._schedule import lr_factor

__all__ = [
    "WeightAverage",
    "fit",
    "TrainConfig",
    "EarlyStopping",
    "TrainResult",
    "TrainState",
    "TrainingDivergedError",
    "Event",
    "Callback",
    "CallbackFn",
    "on",
    "hessian_refresh",
    "ProgressBar",
    "TensorBatches",
    "shard_batch",
    "default_loss",
    "accuracy",
    "lr_factor",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
]
