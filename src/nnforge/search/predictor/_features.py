"""What a latency predictor sees of an architecture: FLOPs, parameters, module calls, and the searched options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["model_features", "architecture_features"]


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)


class _FlopCounter(TorchFunctionMode):
    """Counts the arithmetic of the calls that carry it: linear, convolutions, matmuls, attention (2 per MAC).

    A torch-function mode, not ``torch.utils.flop_counter`` (a dispatch mode whose first use imports
    TorchDynamo: seconds per process, more than a candidate's whole screening).
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func is F.linear:
            self.flops += 2 * args[0].numel() * args[1].shape[0]
        elif func in (F.conv1d, F.conv2d, F.conv3d):
            self.flops += 2 * out.numel() * args[1][0].numel()
        elif func in (torch.matmul, torch.mm, torch.bmm, torch.Tensor.__matmul__):
            self.flops += 2 * out.numel() * args[0].shape[-1]
        elif func is F.scaled_dot_product_attention:  # q k^T, then weights @ v; causal masking ignored
            q, k = args[0], args[1]
            self.flops += 2 * q.numel() * k.shape[-2] + 2 * out.numel() * k.shape[-2]
        return out


@torch.no_grad()
def model_features(model: nn.Module, example_inputs: Any) -> dict[str, float]:
    """Size and work of one batch-1 forward pass.

    Returns:
        ``flops`` (2 per multiply-accumulate of the linear layers, convolutions, matmuls and attention run on
        ``example_inputs``), ``params`` (counting tied tensors once) and ``module_calls`` (leaf modules run in the
        pass: at batch 1 on a CPU each costs a roughly fixed Python and dispatch overhead, often more than its
        arithmetic).
    """
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    counter = _FlopCounter()
    try:
        with counter:
            _call(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())  # .parameters() yields a tied tensor once
    return {"flops": float(counter.flops), "params": float(params), "module_calls": float(calls[0])}


def architecture_features(space: Any, params: Mapping[str, Any], **fixed: Any) -> dict[str, float]:
    """:func:`model_features` of a candidate of an architecture space, plus its numeric searched options.

    Args:
        space: an :class:`~nnforge.search.nas.ArchitectureSpace` (or its registered name).
        params: the candidate's sampled options (keys as in ``space.space()``).
        fixed: options set as given (``vocab_size=65``).
    """
    from nnforge.search.nas import SPACES

    space = SPACES.get(space, where="architecture_features") if isinstance(space, str) else space
    model = space.build(params, **fixed)
    features = model_features(model, space.inputs(params, **fixed))
    for key, value in params.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            features[f"option:{key}"] = float(value)
    return features
