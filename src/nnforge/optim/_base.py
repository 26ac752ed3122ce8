"""Shared pieces of nnforge's optimizers: option types and collecting the tensors a step works on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from pydantic import Field

from nnforge.errors import ConfigError

__all__ = ["Beta", "LR", "WeightDecay", "Eps", "with_grads", "check_dense", "split_flag", "run_closure",
           "RealParamsOnly", "ComplexParameterError"]

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
LR = Annotated[float, Field(gt=0.0)]
WeightDecay = Annotated[float, Field(ge=0.0)]
Eps = Annotated[float, Field(gt=0.0)]


def check_dense(grad: torch.Tensor, name: str) -> None:
    """Raise when a gradient is sparse: nnforge's optimizers handle dense gradients only."""
    if grad.is_sparse:
        raise ConfigError(f"{name} does not support sparse gradients; use nn.Embedding(sparse=False)")


def with_grads(group: dict[str, Any], name: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The parameters of ``group`` that have a gradient, and their gradients (params without one are skipped)."""
    params, grads = [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        check_dense(p.grad, name)
        params.append(p)
        grads.append(p.grad)
    return params, grads


def check_all_dense(param_groups: list[dict[str, Any]], name: str) -> None:
    """Every gradient dense, checked before any parameter moves: a step never stops half-applied."""
    for group in param_groups:
        for p in group["params"]:
            if p.grad is not None:
                check_dense(p.grad, name)


def split_flag(params: list[Any], flag: str) -> list[dict[str, Any]]:
    """Groups that all carry ``flag``: a group (or a plain list of tensors) without it is split in two,
    its ``ndim >= 2`` tensors flagged True and the others False, each part keeping the group's options."""
    if any(isinstance(p, dict) for p in params) and not all(isinstance(p, dict) for p in params):
        raise ConfigError("parameters must be all tensors or all param-group dicts, not a mix")
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    out = []
    for g in groups:
        if flag in g:
            out.append(dict(g))
            continue
        tensors = list(g["params"])
        # a matrix with no entries has nothing to orthogonalise: it goes with the element-wise part
        out.append({**g, "params": [p for p in tensors if p.ndim >= 2 and p.numel()], flag: True})
        out.append({**g, "params": [p for p in tensors if p.ndim < 2 or not p.numel()], flag: False})
    return [g for g in out if g["params"]]


class ComplexParameterError(ConfigError):
    """A complex parameter was given to an optimizer that handles real ones only; ``tensor`` is the parameter."""

    def __init__(self, message: str, tensor: torch.Tensor) -> None:
        super().__init__(message)
        self.tensor = tensor


class RealParamsOnly:
    """Mixin (before ``torch.optim.Optimizer``) refusing complex parameters when a group is added.

    nnforge's own update rules are written for real tensors: on complex ones they used ``g·g`` instead of
    ``|g|²``, dropped the imaginary part, or crashed inside torch. torch's own optimizers handle complex
    parameters (AdamW does); use it, or train ``torch.view_as_real`` views.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # type: ignore[misc]
        groups = self.param_groups  # type: ignore[attr-defined]
        for i, p in enumerate(groups[-1]["params"]):
            if p.is_complex():
                groups.pop()
                raise ComplexParameterError(
                    f"{type(self).__name__} does not support complex parameters: parameter {i} of param group "
                    f"{len(groups)} (shape {tuple(p.shape)}, {p.dtype}) is complex. Use torch's AdamW ('adamw'), "
                    "which handles complex parameters, or train real views (torch.view_as_real).", p)


def run_closure(closure: Callable[[], float] | None) -> float | None:
    """Evaluate an optimizer's closure with gradients enabled (``step`` itself runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
