"""Adversarial attacks on classifiers of continuous inputs: FGSM and PGD (L∞ and L2), and robust accuracy.

An attack takes any module mapping inputs ``x`` to logits ``(B, C)`` and returns inputs ``x_adv`` that raise
its loss, with ``x_adv - x`` inside the ε-ball of the chosen norm (per example) and, by default, inside
[0, 1]. The model is put in eval mode for the attack and restored afterwards; gradients are taken with
respect to the inputs only (``torch.autograd.grad``), so no ``.grad`` of a parameter is ever touched —
which is what lets the same code run inside a training step (see :class:`AdversarialTraining`).

    x_adv = pgd(model, x, y, eps=0.1, steps=10)                      # L∞, step eps/4, random start
    acc = robust_accuracy(model, x, y, AttackConfig(kind="pgd", eps=0.1))

References: Goodfellow et al. 2015 (FGSM); Madry et al. 2018 (PGD, random start, adversarial training).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError, DataError

__all__ = ["AttackConfig", "AttackLoss", "fgsm", "pgd", "attack", "robust_accuracy"]

AttackLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> scalar
Norm = Literal["linf", "l2"]
_TINY = 1e-12  # guards the division by a zero gradient or perturbation norm


@config_type("evaluate.attack")
class AttackConfig(Config):
    """One adversarial attack: FGSM (one step of size ``eps``) or PGD (``steps`` projected steps).

    ``step_size`` defaults to ``eps / 4`` for PGD; FGSM takes no ``steps``/``step_size`` (it is one step of
    ``eps``, without random start). ``clamp`` is the valid input range (None: unbounded). ``seed`` seeds the
    random start.
    """

    kind: Literal["fgsm", "pgd"] = Field("pgd", description="fgsm: one signed-gradient step; pgd: iterated")
    norm: Norm = Field("linf", description="the ball the perturbation stays in: linf or l2")
    eps: float = Field(gt=0, description="radius of the ball, in input units (pixels in [0, 1])")
    steps: int | None = Field(None, ge=1, description="PGD iterations (default 10); FGSM: 1 or unset")
    step_size: float | None = Field(None, gt=0, description="PGD step (default eps / 4)")
    random_start: bool = Field(True, description="PGD starts from a uniform point of the ball")
    clamp: tuple[float, float] | None = Field((0.0, 1.0), description="valid input range (lo, hi), or None")
    seed: int = Field(0, ge=0, description="seed of the random start")

    @field_validator("steps", "step_size")
    @classmethod
    def _pgd_only(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("kind") == "fgsm" and value is not None and not (info.field_name == "steps" and value == 1):
            raise ValueError(f"{info.field_name} applies to kind='pgd' only; FGSM is one step of size eps")
        return value

    @field_validator("clamp")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError("clamp must be (lo, hi) with lo < hi")
        return value

    @property
    def pgd_steps(self) -> int:
        """The number of gradient steps this attack takes (1 for FGSM)."""
        return 1 if self.kind == "fgsm" else (self.steps or 10)

    @property
    def pgd_step_size(self) -> float:
        """The size of each step (``eps`` for FGSM, ``step_size`` or ``eps / 4`` for PGD)."""
        return self.eps if self.kind == "fgsm" else (self.step_size or self.eps / 4)


# --- the pieces ------------------------------------------------------------------------------------------

def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="sum")  # sum: per-example gradients do not shrink


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, frozen batch-norm statistics) for the attack; the caller's mode afterwards."""
    from nnforge.models.text import eval_mode

    with eval_mode(model), torch.enable_grad():  # attacks need gradients even when called under torch.no_grad()
        yield


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped to broadcast against ``t``: (B, 1, 1, ...)."""
    return t.flatten(1).norm(dim=1).clamp_min(_TINY).view(-1, *([1] * (t.dim() - 1)))


def _ascent_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The steepest-ascent direction of unit size in ``norm``: sign for L∞, normalised gradient for L2."""
    return grad.sign() if norm == "linf" else grad / _per_example_norm(grad)


def _project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """The closest point to ``delta`` inside the ε-ball of ``norm`` (per example)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _per_example_norm(delta)).clamp(max=1.0)


def _random_start(x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator) -> torch.Tensor:
    """A uniform random point of the ε-ball around 0, shaped like ``x`` (drawn on the CPU: device-independent)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator)
        return ((2 * u - 1) * eps).to(x.device, x.dtype)
    direction = torch.randn(x.shape, generator=generator)
    direction = direction / _per_example_norm(direction)
    dims = x[0].numel()
    radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator) ** (1.0 / dims)
    return (direction * radius * eps).to(x.device, x.dtype)


def _check(x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float | None, norm: str) -> None:
    if not x.is_floating_point():
        raise DataError(f"attacks need floating-point inputs; got x of dtype {x.dtype}. Pass continuous "
                        "inputs (text models: use perturb_texts instead)")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; pass one label per input")
    if not eps > 0:
        raise ConfigError(f"The 'eps' parameter of the attack must be > 0. Got {eps!r} instead.")
    if steps < 1:
        raise ConfigError(f"The 'steps' parameter of pgd must be an integer >= 1. Got {steps!r} instead.")
    if step_size is not None and not step_size > 0:
        raise ConfigError(f"The 'step_size' parameter of pgd must be > 0. Got {step_size!r} instead.")
    if norm not in ("linf", "l2"):
        raise ConfigError(f"The 'norm' parameter of the attack must be 'linf' or 'l2'. Got {norm!r} instead.")


def _clamp(x: torch.Tensor, clamp: tuple[float, float] | None) -> torch.Tensor:
    return x if clamp is None else x.clamp(clamp[0], clamp[1])


# --- the attacks -----------------------------------------------------------------------------------------

def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, *, norm: Norm = "linf", random_start: bool = True,
        clamp: tuple[float, float] | None = (0.0, 1.0), loss_fn: AttackLoss | None = None,
        generator: torch.Generator | None = None, seed: int = 0) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018): ``steps`` ascent steps on the loss, each projected
    back into the ε-ball around ``x`` (``norm`` "linf" or "l2") and into ``clamp``.

    Args:
        model: any module mapping ``x`` to logits (B, C) (or a tuple whose first item is the logits).
        x, y: inputs (B, ...) and integer targets (B,).
        eps: radius of the ball; step_size: each step's length (default ``eps / 4``).
        random_start: start from a uniform point of the ball instead of ``x``.
        clamp: valid input range, or None.
        loss_fn: ``loss_fn(logits, y) -> scalar`` to ascend (default: summed cross-entropy).
        generator: the random start's generator (CPU); default ``torch.Generator().manual_seed(seed)``.

    Returns:
        ``x_adv`` detached, same shape, dtype and device as ``x``. ``model`` keeps its train/eval mode and
        its parameters' ``.grad``.
    """
    _check(x, y, eps, steps, step_size, norm)
    loss_fn = loss_fn or _cross_entropy
    alpha = step_size if step_size is not None else eps / 4
    x = x.detach()
    if random_start:
        generator = generator or torch.Generator().manual_seed(seed)
        x_adv = _clamp(x + _random_start(x, eps, norm, generator), clamp)
    else:
        x_adv = x.clone()
    with _eval_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(_logits(model, x_adv), y)
            (grad,) = torch.autograd.grad(loss, [x_adv])
            x_adv = x_adv.detach() + alpha * _ascent_direction(grad, norm)
            x_adv = _clamp(x + _project(x_adv - x, eps, norm), clamp)
    return x_adv.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: Norm = "linf",
         clamp: tuple[float, float] | None = (0.0, 1.0), loss_fn: AttackLoss | None = None) -> torch.Tensor:
    """The fast gradient sign method (Goodfellow et al. 2015): one step of size ``eps`` along the sign of the
    input gradient (``norm="l2"``: along the normalised gradient, the "fast gradient method").

    Same arguments and guarantees as :func:`pgd`; deterministic (no random start).
    """
    return pgd(model, x, y, eps, steps=1, step_size=eps, norm=norm, random_start=False, clamp=clamp,
               loss_fn=loss_fn)


def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AttackConfig, *,
           generator: torch.Generator | None = None, eps: float | None = None,
           loss_fn: AttackLoss | None = None) -> torch.Tensor:
    """Run the attack ``config`` describes on one batch; ``eps`` overrides the config's radius (the step
    size scales with it), as an ε schedule needs.
    """
    scale = 1.0 if eps is None else eps / config.eps
    radius = config.eps * scale
    if config.kind == "fgsm":
        return fgsm(model, x, y, radius, norm=config.norm, clamp=config.clamp, loss_fn=loss_fn)
    return pgd(model, x, y, radius, config.pgd_steps, config.pgd_step_size * scale, norm=config.norm,
               random_start=config.random_start, clamp=config.clamp, loss_fn=loss_fn,
               generator=generator or torch.Generator().manual_seed(config.seed))


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AttackConfig | None,
                    batch_size: int = 256) -> float:
    """The fraction of examples still classified correctly after the attack (clean accuracy if ``config``
    is None): ``mean(argmax model(attack(x)) == y)``, in [0, 1].

    Batches are attacked in order with one generator seeded from ``config.seed``, so the figure is
    reproducible for a given ``batch_size``. Inputs are moved to the model's device batch by batch.
    """
    if batch_size < 1:
        raise ConfigError(f"The 'batch_size' parameter of robust_accuracy must be >= 1. Got {batch_size!r} instead.")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise DataError(f"robust_accuracy needs as many labels as inputs, at least one; got x with {x.shape[0]} "
                        f"rows and y with {y.shape[0]}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    generator = torch.Generator().manual_seed(config.seed) if config is not None else None
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        if config is not None:
            xb = attack(model, xb, yb, config, generator=generator)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            correct += int((_logits(model, xb).argmax(-1) == yb).sum())
        model.train(was_training)
    return correct / x.shape[0]
