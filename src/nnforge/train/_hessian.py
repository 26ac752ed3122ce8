"""A callback that refreshes a second-order optimizer's Hessian estimate (Sophia) during training."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nnforge.train._events import CallbackFn, Event, TrainState

__all__ = ["hessian_refresh"]


def hessian_refresh(optimizer: Any, interval: int | None = None) -> CallbackFn:
    """Every ``interval`` steps (default: ``optimizer.hessian_update_interval``), estimate the diagonal
    Hessian with Gauss-Newton-Bartlett: labels sampled from the model's own predictions on the current
    batch, one backward pass, then ``optimizer.update_hessian()``.

    The model must return logits (or ``(logits, loss)``) for ``batch[0]``. Under DDP each rank samples on
    its own slice of the batch; the sampled-label gradients are averaged over the ranks (one all-reduce)
    before ``update_hessian()``, so every rank holds the same estimate and the weights stay identical.
    """
    if not hasattr(optimizer, "update_hessian"):
        raise TypeError(f"{type(optimizer).__name__} has no update_hessian(); this callback is for Sophia-like optimizers")
    every = int(interval if interval is not None else getattr(optimizer, "hessian_update_interval", 10))

    last: dict[str, Any] = {}

    def refresh(event: Event, state: TrainState) -> None:
        if event is Event.AFTER_BACKWARD:  # the loop clears state.batch before STEP_END: keep the last one
            last["batch"] = state.batch
            return
        if event is not Event.STEP_END or state.step % every or last.get("batch") is None:
            return
        out = state.model(last.pop("batch")[0])
        logits = out[0] if isinstance(out, tuple) else out
        sampled = torch.distributions.Categorical(logits=logits.detach()).sample()
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), sampled.reshape(-1)).backward()
        if state.world_size > 1:
            _average_grads(state.model)
        optimizer.update_hessian()
        optimizer.zero_grad(set_to_none=True)

    return refresh


def _average_grads(model: torch.nn.Module) -> None:
    """Average the parameters' ``.grad`` over the ranks of the default process group, in one all-reduce."""
    import torch.distributed as dist

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
