"""Per-example gradients with ``torch.func``: one ``vmap(grad(...))`` over a chunk of rows, never a Python loop.

The model runs in eval mode (no dropout; BatchNorm with its running statistics), as a function of the selected
parameters only (:func:`select_parameters`); every other parameter and buffer is held fixed. Inputs are a
tensor ``(N, ...)`` or a dict of tensors ``(N, ...)`` (token ids and attention masks of a text classifier);
each example is seen by the model as a batch of one, so a model written for batches needs no change.

Memory: one chunk holds ``batch_size`` gradients of the selected parameters (``batch_size × P`` floats)
plus the activations of ``batch_size`` forward passes.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.errors import ConfigError, DataError
from nnforge.models.text import eval_mode

__all__ = ["Inputs", "ExampleFn", "select_parameters", "per_example_grads", "iter_per_example_grads",
           "cross_entropy_loss", "classification_margin", "model_outputs", "num_rows", "take_rows"]

Inputs = torch.Tensor | Mapping[str, torch.Tensor]
# fn(outputs of a batch of one, its target of shape (1, ...)) -> scalar; differentiated per example
ExampleFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits ``(B, C)`` against class indices ``(B,)``: TracIn's default loss."""
    return F.cross_entropy(logits.float(), targets)


def classification_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """TRAK's model output for classification: ``log(p / (1 - p))`` of the target class, summed over the batch.

    Computed stably as ``logit_y - logsumexp(other logits)``; ``sigmoid`` of it is the target's softmax
    probability ``p``.
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B,)
    others = logits.scatter(-1, targets.unsqueeze(-1), float("-inf"))  # (B, C), the target masked out
    return (picked - torch.logsumexp(others, dim=-1)).sum()


def num_rows(inputs: Inputs) -> int:
    """The number of examples in a tensor or dict of tensors."""
    if isinstance(inputs, Mapping):
        return int(next(iter(inputs.values())).shape[0])
    return int(inputs.shape[0])


def take_rows(inputs: Inputs, rows: slice | torch.Tensor) -> Inputs:
    """Rows ``rows`` of a tensor or of every tensor of a dict."""
    if isinstance(inputs, Mapping):
        return {k: v[rows] for k, v in inputs.items()}
    return inputs[rows]


def select_parameters(model: nn.Module, patterns: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The trainable parameters whose names match one of the glob ``patterns`` (every trainable one when empty).

    Raises:
        ConfigError: nothing matches; the message lists the model's parameter names.
    """
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    chosen: dict[str, torch.Tensor] = {
        n: p for n, p in trainable.items() if not patterns or any(fnmatch.fnmatchcase(n, g) for g in patterns)}
    if not chosen:
        shown = ", ".join(list(trainable)[:12]) + (" …" if len(trainable) > 12 else "")
        raise ConfigError(f"parameters {list(patterns)!r} match no trainable parameter of {type(model).__name__}; "
                          f"its trainable parameters are: {shown or 'none'}")
    return chosen


def _logits(out: Any) -> torch.Tensor:
    """The tensor of a model's output: itself, the first of a tuple, or ``.logits``/``["logits"]``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple):
        return _logits(out[0])
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]  # type: ignore[no-any-return]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise DataError(f"the model returned a {type(out).__name__}; data attribution needs logits (a tensor, a tuple "
                    "starting with one, or an output with .logits)")


def _call(model: nn.Module, weights: dict[str, torch.Tensor], inputs: Inputs) -> torch.Tensor:
    if isinstance(inputs, Mapping):
        return _logits(torch.func.functional_call(model, weights, args=(), kwargs=dict(inputs)))
    return _logits(torch.func.functional_call(model, weights, (inputs,)))


def forward_inputs(model: nn.Module, inputs: Inputs) -> Inputs:
    """``inputs`` without the dict keys ``model.forward`` does not take (a tokenizer's ``token_type_ids`` for a
    model whose forward has only ``input_ids`` and ``attention_mask``); tensors and ``**kwargs`` forwards as given."""
    if not isinstance(inputs, Mapping):
        return inputs
    params = inspect.signature(model.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return inputs
    names = {p.name for p in params}
    kept = {k: v for k, v in inputs.items() if k in names}
    if not kept:
        raise DataError(f"none of the input keys {sorted(inputs)} is an argument of {type(model).__name__}.forward "
                        f"({', '.join(sorted(names))})")
    return kept


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def iter_per_example_grads(model: nn.Module, inputs: Inputs, targets: torch.Tensor, fn: ExampleFn | None = None, *,
                           parameters: Sequence[str] = (), batch_size: int = 64
                           ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first_row, grads)`` per chunk of ``batch_size`` examples, ``grads`` of shape (rows, P) in float32.

    ``P`` counts the selected parameters (:func:`select_parameters`), flattened in ``named_parameters`` order.
    ``fn(outputs, target)`` is differentiated per example (default: cross-entropy).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    loss = fn or cross_entropy_loss
    chosen = select_parameters(model, parameters)
    weights = {n: p.detach() for n, p in chosen.items()}
    fixed = {n: t.detach() for n, t in [*model.named_parameters(), *model.named_buffers()] if n not in chosen}
    device = _device(model)

    def one(w: dict[str, torch.Tensor], x: Inputs, y: torch.Tensor) -> torch.Tensor:
        return loss(_call(model, {**fixed, **w}, _unsqueeze(x)), y.unsqueeze(0))

    per_example = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))
    inputs = forward_inputs(model, inputs)
    n = num_rows(inputs)
    with eval_mode(model):
        for lo in range(0, n, batch_size):
            rows = slice(lo, min(n, lo + batch_size))
            x = take_rows(inputs, rows)
            x = {k: v.to(device) for k, v in x.items()} if isinstance(x, Mapping) else x.to(device)
            grads = per_example(weights, x, targets[rows].to(device))
            yield lo, torch.cat([grads[name].reshape(rows.stop - lo, -1) for name in chosen], dim=1).float()


def per_example_grads(model: nn.Module, inputs: Inputs, targets: torch.Tensor, fn: ExampleFn | None = None, *,
                      parameters: Sequence[str] = (), batch_size: int = 64) -> torch.Tensor:
    """Gradients of ``fn`` for every example, (N, P): see :func:`iter_per_example_grads`."""
    return torch.cat([g for _, g in iter_per_example_grads(model, inputs, targets, fn, parameters=parameters,
                                                             batch_size=batch_size)])


@torch.no_grad()
def model_outputs(model: nn.Module, inputs: Inputs, targets: torch.Tensor, fn: ExampleFn, *,
                  batch_size: int = 256) -> torch.Tensor:
    """``fn`` of every example in eval mode, (N,): e.g. the margin whose sigmoid is TRAK's ``p``."""
    inputs = forward_inputs(model, inputs)
    device, n, out = _device(model), num_rows(inputs), []
    weights = dict(model.named_parameters()) | dict(model.named_buffers())
    with eval_mode(model):
        for lo in range(0, n, batch_size):
            rows = slice(lo, min(n, lo + batch_size))
            x = take_rows(inputs, rows)
            x = {k: v.to(device) for k, v in x.items()} if isinstance(x, Mapping) else x.to(device)
            one = torch.func.vmap(lambda xi, yi: fn(_call(model, weights, _unsqueeze(xi)), yi.unsqueeze(0)))
            out.append(one(x, targets[rows].to(device)).float().cpu())
    return torch.cat(out)


def _unsqueeze(x: Inputs) -> Inputs:
    return {k: v.unsqueeze(0) for k, v in x.items()} if isinstance(x, Mapping) else x.unsqueeze(0)
