"""One optimizer object made of several: param groups, ``step``, ``zero_grad`` and ``state_dict`` in one.

Used for torch's Muon, which only takes 2-D hidden matrices, combined with AdamW for everything else. The
hybrid's ``param_groups`` are the very dicts of its parts (in order), so an LR scheduler that edits
``group["lr"]`` drives every part.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from nnforge.errors import ConfigError
from nnforge.optim._base import check_all_dense, run_closure

__all__ = ["HybridOptimizer"]


class HybridOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, acting as one.

    Args:
        optimizers: the parts; each parameter must belong to exactly one of them.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ConfigError("HybridOptimizer needs at least one optimizer")
        self.optimizers = list(optimizers)
        # The parts' own group dicts, so edits through either object are seen by both.
        super().__init__([g for o in self.optimizers for g in o.param_groups], {})

    def _sync(self) -> None:
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
        merged: defaultdict[torch.Tensor, Any] = defaultdict(dict)
        for o in self.optimizers:
            merged.update(o.state)
        self.state = merged  # a read-only view of the parts' state, refreshed after each step and load

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """Step every part; the closure, if any, is evaluated once."""
        loss = run_closure(closure)
        check_all_dense(self.param_groups, type(self.optimizers[0]).__name__)
        for o in self.optimizers:
            o.step()
        self._sync()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """``{"parts": [state_dict of each part]}``."""
        return {"parts": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned (same parts, same parameters)."""
        parts = state_dict.get("parts")
        if not isinstance(parts, list) or len(parts) != len(self.optimizers):
            raise ConfigError(f"state_dict holds {len(parts) if isinstance(parts, list) else 'no'} optimizer "
                              f"parts; this HybridOptimizer has {len(self.optimizers)}")
        for o, s in zip(self.optimizers, parts, strict=True):
            o.load_state_dict(s)
        self._sync()
