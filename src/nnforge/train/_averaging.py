"""Weight averaging (an exponential moving average of the weights) as a training-loop callback.

Adversarially trained models overfit robustly: their robust test accuracy peaks and then falls while the
training loss keeps going down (Rice et al. 2020). Averaging the weights along the trajectory flattens that
curve and usually raises the robust accuracy it ends at, at no extra forward pass (Izmailov et al. 2018;
Gowal et al. 2020 use an EMA of decay 0.995–0.999 in their robust training). The callback keeps the average
beside the model and, when training ends, copies it into the model:

    from nnforge.train import WeightAverage
    ema = WeightAverage(decay=0.995)
    fit(model, data, config=TrainConfig(max_steps=1500), callbacks=[AdversarialTraining(...), ema])
    # model now holds the averaged weights (ema.swap_at_end=True); ema.state_dict() has them too

It is not specific to adversarial training: give a standard model the same averaging when comparing the two.
Floating-point buffers (batch-norm running statistics) are averaged alike; other buffers (batch-norm's
``num_batches_tracked``) are copied. The average lives in memory only: a run resumed from a checkpoint starts
its average afresh from the resumed weights.
"""

from __future__ import annotations

import torch
from torch import nn

from nnforge.errors import ConfigError
from nnforge.train._events import Callback, TrainState

__all__ = ["WeightAverage"]


class WeightAverage(Callback):
    """An exponential moving average of the model's weights, updated after every optimizer step.

    After step ``t`` (counting from ``start_step``) the average moves towards the weights by
    ``1 - d_t`` with ``d_t = min(decay, (1 + t) / (10 + t))``: the early average follows the weights
    closely instead of remembering the random initialisation (the warm-up of TensorFlow's and timm's EMA).

    Args:
        decay: the EMA factor in [0, 1) — about ``1 / (1 - decay)`` recent steps carry the average.
        start_step: optimizer steps before averaging starts (the average is a copy of the weights until then).
        swap_at_end: at the end of a successful ``fit``, load the average into the model.
    """

    def __init__(self, decay: float = 0.995, *, start_step: int = 0, swap_at_end: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"The 'decay' parameter of WeightAverage must be a float in [0, 1). "
                              f"Got {decay!r} instead.")
        if start_step < 0:
            raise ConfigError(f"The 'start_step' parameter of WeightAverage must be an integer >= 0. "
                              f"Got {start_step!r} instead.")
        self.decay, self.start_step, self.swap_at_end = float(decay), start_step, swap_at_end
        self.updates = 0  # averaging updates made since start_step
        self._average: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights and buffers, keyed as ``model.state_dict()`` (copies)."""
        return {k: v.clone() for k, v in self._average.items()}

    def copy_to(self, model: nn.Module) -> None:
        """Load the average into ``model`` (a module of the same architecture)."""
        if not self._average:
            raise ConfigError("WeightAverage has no average yet: pass it to fit(..., callbacks=[...]) first")
        model.load_state_dict(self._average)

    def _snapshot(self, model: nn.Module) -> None:
        self._average = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def fit_start(self, state: TrainState) -> None:
        self._snapshot(state.model)
        self.updates = 0

    @torch.no_grad()
    def step_end(self, state: TrainState) -> None:
        if state.step <= self.start_step:
            self._snapshot(state.model)
            return
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, value in state.model.state_dict().items():
            avg = self._average[name]
            if avg.is_floating_point():
                avg.mul_(d).add_(value.detach().to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(value)
        self.updates += 1

    def fit_end(self, state: TrainState) -> None:
        if self.swap_at_end and state.error is None and self._average:
            self.copy_to(state.model)
