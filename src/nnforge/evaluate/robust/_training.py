"""Adversarial training (Madry et al. 2018) as a training-loop callback, and as a plain function.

At :attr:`~nnforge.train.Event.BATCH_READY` the callback replaces the inputs of ``state.batch`` — all of
them, or the first ``ratio`` share of the rows — by adversarial examples computed against the current
model, so the loss the loop then computes is the adversarial (or mixed) loss:

    from nnforge.evaluate.robust import AdversarialTraining, AttackConfig
    fit(model, TensorBatches(x, y, batch_size=64), config=TrainConfig(max_steps=600),
        callbacks=[AdversarialTraining(AttackConfig(kind="pgd", eps=0.1, steps=7))])

The attack runs on ``state.model`` (never the DDP wrapper) with gradients taken with respect to the inputs
only: no parameter's ``.grad`` changes, no DDP hook or all-reduce fires, and each rank attacks its own
shard of the batch. Its random start is seeded from ``(config.seed, rank, step, micro-batch)``, so runs
are reproducible and resume from a checkpoint exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nnforge.errors import ConfigError, DataError
from nnforge.evaluate.robust._attacks import AttackConfig, _logits, attack
from nnforge.train import Callback, Event, TrainState

__all__ = ["AdversarialTraining", "TradesLoss", "adversarial_batch"]


def adversarial_batch(model: nn.Module, batch: Any, config: AttackConfig, *, ratio: float = 1.0,
                      generator: torch.Generator | None = None, eps: float | None = None) -> Any:
    """A copy of ``batch`` (``(inputs, targets, ...)``) whose first ``round(ratio * B)`` inputs are replaced
    by adversarial examples against ``model``; the other rows, the targets and any further items are kept.

    ``eps`` overrides the config's radius (its step size scales along), for ε schedules.
    """
    if isinstance(batch, Mapping) or not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DataError("adversarial training needs batches (inputs, targets, ...) as a tuple or list; got "
                        f"{type(batch).__name__}. Wrap a dict-batch dataset so that it yields (inputs, targets)")
    x, y = batch[0], batch[1]
    n = int(round(ratio * x.shape[0]))
    if n == 0:
        return batch
    x_adv = attack(model, x[:n], y[:n], config, generator=generator, eps=eps)
    x_new = x_adv if n == x.shape[0] else torch.cat([x_adv, x[n:].detach()])
    return type(batch)([x_new, *batch[1:]]) if isinstance(batch, list) else (x_new, *batch[1:])


class AdversarialTraining(Callback):
    """Train on adversarial examples: replaces ``state.batch`` at ``BATCH_READY`` (see the module docstring).

    Args:
        attack: the attack that makes the examples (PGD at ε=0.1 for Madry-style training; FGSM is cheaper
            but overfits to its own single step unless it has a random start).
        ratio: the share of each batch's rows replaced, in [0, 1]: 1.0 trains on adversarial examples only
            (Madry et al.); 0.5 mixes clean and adversarial rows half and half (Goodfellow et al. 2015).
        eps_warmup_steps: grow ε linearly from ``eps / eps_warmup_steps`` to ``eps`` over the first
            optimizer steps (0: full ε from the start); the step size grows along.

    ``batches_replaced`` counts the batches it changed.
    """

    def __init__(self, attack: AttackConfig, ratio: float = 1.0, *, eps_warmup_steps: int = 0) -> None:
        if not isinstance(attack, AttackConfig):
            raise ConfigError(f"The 'attack' parameter of AdversarialTraining must be an AttackConfig. "
                              f"Got {type(attack).__name__} instead.")
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"The 'ratio' parameter of AdversarialTraining must be a float in the range (0, 1]. "
                              f"Got {ratio!r} instead.")
        if eps_warmup_steps < 0:
            raise ConfigError(f"The 'eps_warmup_steps' parameter of AdversarialTraining must be an integer >= 0. "
                              f"Got {eps_warmup_steps!r} instead.")
        self.attack, self.ratio, self.eps_warmup_steps = attack, ratio, eps_warmup_steps
        self.batches_replaced = 0

    def eps_at(self, step: int) -> float:
        """The radius used at optimizer step ``step`` (0-based)."""
        if self.eps_warmup_steps == 0:
            return self.attack.eps
        return self.attack.eps * min(1.0, (step + 1) / self.eps_warmup_steps)

    def batch_ready(self, state: TrainState) -> None:
        seed = [self.attack.seed, state.rank, state.step, state.micro_step]
        generator = torch.Generator().manual_seed(hash(tuple(seed)) % 2**63)
        state.batch = adversarial_batch(state.model, state.batch, self.attack, ratio=self.ratio,
                                        generator=generator, eps=self.eps_at(state.step))
        self.batches_replaced += 1


def _kl_rows(log_p_adv: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p_clean || p_adv), from log-probabilities of the adversarial input and clean probabilities."""
    return (p_clean * (p_clean.clamp_min(1e-12).log() - log_p_adv)).sum(-1)


class TradesLoss:
    """The TRADES loss (Zhang et al. 2019) as a ``loss_fn`` for :func:`nnforge.train.fit`:

        loss = CE(f(x), y) + beta * mean_i KL(softmax f(x_i) || softmax f(x_adv_i))

    where ``x_adv`` maximises that KL term inside the attack's ε-ball (PGD on the KL, from the attack's random
    start; the model is in eval mode while it is searched, as in the paper). Unlike Madry's training it keeps
    the clean cross-entropy and only asks the prediction to stay the same nearby, which ``beta`` weighs:
    larger beta, more robust and less accurate on clean inputs (the paper uses 6).

        trades = TradesLoss(AttackConfig(eps=0.15, steps=7), beta=6.0)
        fit(model, TensorBatches(x, y, batch_size=64), config=..., loss_fn=trades, callbacks=[trades.callback])

    With ``trades.callback`` in ``callbacks`` too, it seeds each random start from ``(attack.seed, rank, step,
    micro-batch)`` at ``BATCH_READY`` (reproducible, exact on resume) and attacks ``state.model`` (never a DDP
    wrapper); as a ``loss_fn`` alone it seeds from ``(attack.seed, number of calls)`` and attacks
    ``getattr(model, "module", model)``. Batches are ``(inputs, targets, ...)``. The loop's evaluation calls the
    loss too, so evaluation losses are TRADES losses (with their own attack). Costs ``attack.steps + 3`` forward
    passes per batch, about as much as Madry's training with the same attack.
    """

    def __init__(self, attack: AttackConfig, beta: float = 6.0) -> None:
        if not isinstance(attack, AttackConfig):
            raise ConfigError(f"The 'attack' parameter of TradesLoss must be an AttackConfig. "
                              f"Got {type(attack).__name__} instead.")
        if not beta >= 0:
            raise ConfigError(f"The 'beta' parameter of TradesLoss must be a float >= 0. Got {beta!r} instead.")
        self.attack, self.beta = attack, float(beta)
        self.calls = 0
        self._seed: tuple[int, ...] | None = None
        self._model: nn.Module | None = None

    def callback(self, event: Event, state: TrainState) -> None:
        """The training-loop callback: at ``BATCH_READY`` notes the seed and the model for the next loss call."""
        if event is not Event.BATCH_READY:
            return
        self._seed = (self.attack.seed, state.rank, state.step, state.micro_step)
        self._model = state.model

    def adversarial_inputs(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``x_adv`` in the attack's ball around ``x`` that maximises KL(f(x) || f(x_adv)) (model in eval mode)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                p_clean = torch.softmax(_logits(model, x).float(), dim=-1)
        finally:
            model.train(was_training)

        def kl(logits: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            return _kl_rows(torch.log_softmax(logits.float(), dim=-1), p_clean).sum()

        dummy = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return attack(model, x, dummy, self.attack, generator=generator, loss_fn=kl)

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if isinstance(batch, Mapping) or not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError("TradesLoss needs batches (inputs, targets, ...) as a tuple or list; got "
                            f"{type(batch).__name__}. Wrap a dict-batch dataset so that it yields (inputs, targets)")
        x, y = batch[0], batch[1]
        seed = self._seed if self._seed is not None else (self.attack.seed, self.calls)
        self._seed = None
        generator = torch.Generator().manual_seed(hash(seed) % 2**63)
        target = self._model if self._model is not None else getattr(model, "module", model)
        self.calls += 1
        x_adv = self.adversarial_inputs(target, x, generator)
        clean, adv = (_logits(model, inputs).float() for inputs in (x, x_adv))  # apart, as in the paper
        natural = torch.nn.functional.cross_entropy(clean, y)
        robust = _kl_rows(torch.log_softmax(adv, dim=-1), torch.softmax(clean, dim=-1)).mean()
        return natural + self.beta * robust
