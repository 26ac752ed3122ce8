"""Gradual pruning as a registered pruning transform: ``prune_(model, GradualPruneConfig(...), train=...)``
prunes on the schedule while ``train(model, callbacks)`` trains the model (the ``prune`` recipe step passes its
recovery training), so the config is accepted by name like every other pruning method."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from nnforge.compress._transform import ModuleFilter, TransformReport, register_transform
from nnforge.compress.prune.gradual.callback import GradualPruning
from nnforge.compress.prune.gradual.config import GradualPruneConfig
from nnforge.compress.prune.unstructured import apply_nm, apply_unstructured
from nnforge.errors import ConfigError, NnforgeError

__all__ = ["apply_gradual"]

log = logging.getLogger(__name__)

Train = Callable[[nn.Module, list[Any]], Any]


@register_transform(GradualPruneConfig, kind="prune")
def apply_gradual(model: nn.Module, config: GradualPruneConfig, filter: ModuleFilter | None = None, *,
                  train: Train | None = None, skeleton: bool = False, **inputs: Any) -> TransformReport:
    """Prune ``model`` on ``config``'s cubic schedule while ``train(model, callbacks)`` trains it.

    Args:
        train: runs the training, passing ``callbacks`` to :func:`nnforge.train.fit` (e.g. ``lambda m, cbs:
            fit(m, data, config=TrainConfig(max_steps=200), callbacks=cbs)``); it should run at least
            ``config.end_step`` optimizer steps, or the schedule stops short of its final sparsity.
        skeleton: build a saved model's layers: nothing to do, the zeros are in the saved dense weights.

    Returns:
        The callback's report: per pruned module the sparsity reached and the error against its weights at
        the start of training.

    Raises:
        ConfigError: no ``train`` was given (there is no gradual schedule without training).
        NnforgeError: ``train`` returned without running the callbacks through a training loop.
    """
    if skeleton:  # the shapes are dense: the one-shot config of the same pattern builds them
        final = GradualPruning(config).final_config()
        handler = apply_nm if config.n is not None else apply_unstructured
        report = handler(model, final, filter, skeleton=True)  # type: ignore[arg-type]
        report.config = config.to_dict()
        return report
    if train is None:
        raise ConfigError("gradual pruning prunes while the model trains: prune_(model, config, train=lambda m, "
                          "callbacks: fit(m, data, ..., callbacks=callbacks)), or pass gradual_pruning_callback(config) "
                          "to nnforge.train.fit yourself; in a recipe, give the prune step "
                          "recovery: {train: {max_steps: N}} with N >= end_step")
    callback = GradualPruning(config, filter)
    train(model, [callback])
    if callback.report is None:
        raise NnforgeError("gradual pruning: train(model, callbacks) returned without running the callbacks in "
                           "nnforge.train.fit (no fit_end event reached them): pass them to fit(..., callbacks=...)")
    if callback.sparsity < config.final_sparsity - 1e-9:  # each module's detail gives the sparsity reached
        log.warning("gradual pruning: training stopped at sparsity %.4f, before the schedule's %s at step %d: "
                    "train at least end_step steps", callback.sparsity, config.final_sparsity, config.end_step)
    return callback.report
