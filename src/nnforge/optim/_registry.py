"""The registry of optimizers and :func:`build_optimizer`, the one way to make one by name.

Each optimizer module registers an :class:`OptimizerSpec`: its config class (validated options), a factory
``factory(params, config) -> torch.optim.Optimizer``, the paper it implements, whether it wants the
parameters split into hidden matrices and the rest (:func:`~nnforge.optim.param_groups_for`), and the
shapes of its per-parameter state (which a checkpoint's loader checks). Every public module of this
package is imported with it, so an optimizer is one new file that nothing else lists.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nnforge.config import Config
from nnforge.errors import ConfigError
from nnforge.optim._base import ComplexParameterError
from nnforge.optim._groups import param_groups_for
from nnforge.registry import Registry

__all__ = ["OPTIMIZERS", "OptimizerSpec", "ParamsT", "StateShape", "build_optimizer", "optimizer_config", "optimizer_names",
           "register_optimizer", "like_param", "scalar", "rows_square", "cols_square", "ADAM_STATE"]

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]]
Factory = Callable[[list[Any], Any], torch.optim.Optimizer]
StateShape = Callable[[tuple[int, ...]], Collection[tuple[int, ...]]]
"""``rule(param_shape) -> the shapes`` one optimizer-state entry of that parameter may have."""


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    rows = shape[0] if shape else 1
    n = 1
    for d in shape:
        n *= d
    return rows, n // rows if rows else 0


def like_param(shape: tuple[int, ...]) -> Collection[tuple[int, ...]]:
    """The parameter's shape (moments, momentum), or its ``(rows, rest)`` matrix view for an N-D one."""
    return {tuple(shape), _rows_cols(shape)} if len(shape) > 2 else {tuple(shape)}


def scalar(shape: tuple[int, ...]) -> Collection[tuple[int, ...]]:
    """A 0-d tensor (a step count)."""
    return {()}


def rows_square(shape: tuple[int, ...]) -> Collection[tuple[int, ...]]:
    """``(rows, rows)``: a left preconditioner or its eigenbasis (SOAP)."""
    rows, _ = _rows_cols(shape)
    return {(rows, rows)}


def cols_square(shape: tuple[int, ...]) -> Collection[tuple[int, ...]]:
    """``(rest, rest)``: a right preconditioner or its eigenbasis (SOAP)."""
    _, cols = _rows_cols(shape)
    return {(cols, cols)}


ADAM_STATE: Mapping[str, StateShape] = {"step": scalar, "exp_avg": like_param, "exp_avg_sq": like_param,
                                        "max_exp_avg_sq": like_param}
"""The per-parameter state of torch's Adam family."""


@dataclass(frozen=True)
class OptimizerSpec:
    """What the registry knows about one optimizer.

    Args:
        name: the public name (``"soap"``).
        config: its options, a :class:`~nnforge.config.Config` subclass.
        factory: ``factory(params, config)`` builds the optimizer over a list of tensors or param groups.
        paper: the paper it implements, as "Authors (year), Title".
        matrix_aware: True when a model's parameters should be split by :func:`param_groups_for`.
        state: ``{state key: shape rule}`` for every tensor it keeps per parameter (:data:`StateShape`;
            :func:`like_param`, :func:`scalar`, … or its own). :func:`build_optimizer` hands it to the
            optimizer as ``state_shapes``, which a training checkpoint's loader checks a saved state against;
            the optimizer conformance test fails for a tensor kept under a key not declared here.
    """

    name: str
    config: type[Config]
    factory: Factory
    paper: str
    matrix_aware: bool = False
    state: Mapping[str, StateShape] = field(default_factory=dict)


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


def register_optimizer(name: str, config: type[Config], paper: str, matrix_aware: bool = False, *,
                       state: Mapping[str, StateShape] | None = None) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory`` under ``name`` with its config class, paper and state shapes."""

    def decorator(factory: Factory) -> Factory:
        OPTIMIZERS.add(name, OptimizerSpec(name, config, factory, paper, matrix_aware, dict(state or {})))
        return factory

    return decorator


def optimizer_names() -> list[str]:
    """The registered optimizer names, sorted."""
    return OPTIMIZERS.names()


def _validate(spec: OptimizerSpec, options: dict[str, Any]) -> Config:
    allowed = sorted(spec.config.model_fields)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for optimizer {spec.name!r}. "
                          f"Allowed options: {', '.join(allowed)}.")
    try:
        return spec.config(**options)
    except ConfigError as exc:
        raise ConfigError(f"optimizer {spec.name!r}: {exc} Allowed options: {', '.join(allowed)}.") from None


def optimizer_config(name: str, **options: Any) -> Config:
    """The validated config of optimizer ``name`` with ``options`` — what :func:`build_optimizer` would use — for
    checking options when a configuration is read, long before a model exists.

    Raises:
        ConfigError: ``name`` is unknown, or an option is unknown or out of range (named, with the allowed ones).
    """
    return _validate(OPTIMIZERS.get(name, where="optimizer"), options)


def build_optimizer(name: str, model_or_params: nn.Module | ParamsT, **options: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` over a model or its parameters.

    Args:
        name: a registered name (see :func:`optimizer_names`).
        model_or_params: a model (matrix-aware optimizers then split it with :func:`param_groups_for`), or
            an iterable of tensors or param-group dicts as for any ``torch.optim.Optimizer``.
        **options: the optimizer's options (its config fields), validated.

    Returns:
        The optimizer, a ``torch.optim.Optimizer`` that LR schedulers and ``state_dict`` work with.

    Raises:
        ConfigError: ``name`` is unknown, or an option is unknown or out of range (the message names it and
            lists the allowed options), or one of nnforge's own optimizers was given a complex parameter
            (named; torch's adamw takes them).
    """
    spec = OPTIMIZERS.get(name, where="optimizer")
    config = _validate(spec, options)
    if isinstance(model_or_params, nn.Module):
        if spec.matrix_aware:
            params: list[Any] = param_groups_for(model_or_params, "muon")
        else:
            params = [p for p in model_or_params.parameters() if p.requires_grad]
    elif isinstance(model_or_params, torch.Tensor):  # iterating it would yield its rows, not parameters
        raise ConfigError(f"optimizer {name!r}: pass a model, or a list of parameters ([tensor]), not one tensor")
    else:
        params = list(model_or_params)
    if not params:
        raise ConfigError(f"optimizer {name!r}: no parameters to optimize")
    try:
        optimizer = spec.factory(params, config)
    except ComplexParameterError as exc:
        if isinstance(model_or_params, nn.Module):  # name the model's parameter
            where = next((n for n, p in model_or_params.named_parameters() if p is exc.tensor), None)
            if where is not None:
                raise ComplexParameterError(f"optimizer {name!r}: model parameter {where!r}: {exc}", exc.tensor) from None
        raise
    # the checkpoint loader's protocol: which per-parameter state tensors must have which shapes
    optimizer.state_shapes = dict(spec.state)  # type: ignore[attr-defined]
    return optimizer
