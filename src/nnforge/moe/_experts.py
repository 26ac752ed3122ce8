"""The experts: ``E`` feed-forward networks, each ``c_proj(act(c_fc(x)))`` with ``nn.Linear`` projections, and
the dispatch that runs them.

Each expert is an ordinary module (``experts.0.c_fc`` …), so everything that works on Linears works per expert:
``quantize_`` quantizes each expert's projections, PEFT puts LoRA on them by name, a dense FFN's Linears seed
them (:func:`nnforge.moe.upcycle_`). Four dispatches compute the same thing (tested equal, forward and backward):

* ``fused`` — the grouped computation as one autograd node with a hand-written backward (``_fused.py``): six
  matmuls per expert and a few passes over all rows, nothing per expert that autograd would record; plain
  ``nn.Linear`` experts in the input's dtype only, and none observed by a forward hook (calibration, observers:
  the fused node never calls the modules, so ``auto`` then takes ``grouped``);
* ``grouped`` — the tokens gathered once in expert order (the router already sorted its assignments), each expert
  run on its one contiguous block, the weighted outputs added back with one ``index_add_``; works with any
  expert module (a quantized one too);
* ``padded`` — the blocks padded to the largest and run as two batched matmuls (``bmm``) over all experts (plain
  fp32 Linears only: their weights are stacked);
* ``dense`` — every expert on every token, weighted by a dense (tokens, experts) combine matrix that is zero
  where a token did not choose the expert: ``E / k`` times the work, but no shape depends on the routing, so it
  is what a traced or ONNX-exported model computes (``auto`` takes it while tracing or exporting);
* ``reference`` — the Mixtral-style loop: each expert finds its tokens with ``torch.where``, gathers them and
  scatters its outputs back; kept as the test reference and the benchmark's baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.moe._fused import fused_experts
from nnforge.moe._routing import Routing

__all__ = ["Experts", "ExpertFFN", "DISPATCHES"]

DISPATCHES = ("auto", "fused", "grouped", "padded", "dense", "reference")
Dispatch = Literal["auto", "fused", "grouped", "padded", "dense", "reference"]
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook (global, or on ``module`` or any submodule) would expect these modules to run."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class ExpertFFN(nn.Module):
    """One expert: ``c_proj(act(c_fc(x)))`` (the char-GPT's MLP names)."""

    def __init__(self, d_model: int, hidden: int, activation: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"The 'activation' parameter of ExpertFFN must be one of {', '.join(_ACTIVATIONS)}. "
                             f"Got {activation!r} instead.")
        self.activation = activation
        self.c_fc = nn.Linear(d_model, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(_ACTIVATIONS[self.activation](self.c_fc(x)))


class Experts(nn.ModuleList):
    """``num_experts`` :class:`ExpertFFN` modules ``d_model → hidden → d_model`` and their dispatch."""

    def __init__(self, num_experts: int, d_model: int, hidden: int, *, activation: str = "gelu",
                 bias: bool = True) -> None:
        super().__init__(ExpertFFN(d_model, hidden, activation, bias) for _ in range(num_experts))
        self.num_experts, self.d_model, self.hidden, self.activation = num_experts, d_model, hidden, activation

    def expert(self, e: int) -> ExpertFFN:
        """Expert ``e`` (typed; ``experts[e]`` works too)."""
        return cast(ExpertFFN, self[e])

    def members(self) -> list[ExpertFFN]:
        """The experts in order (typed)."""
        return [self.expert(e) for e in range(len(self))]

    def dispatch(self, x: torch.Tensor, routing: Routing, how: Dispatch = "auto") -> torch.Tensor:
        """The weighted sum of each token's experts' outputs, (N, d); a token with no assignment gets zeros.

        ``auto`` is ``fused`` where it applies (plain Linear experts in ``x``'s dtype, no autocast) and ``grouped``
        otherwise.
        """
        if how == "auto":
            exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            how = "dense" if exporting else "fused" if self._fusable(x) else "grouped"
        elif how == "fused" and not self._fusable(x):
            raise ValueError("the fused dispatch needs plain nn.Linear experts in the input's dtype and device, no "
                             "autocast and no forward hooks on them (these are quantized, adapted, in another dtype or "
                             "observed); use dispatch 'grouped'")
        if how == "dense":
            return self._dense(x, routing)
        if how == "fused":
            return self._fused(x, routing)
        if how == "grouped":
            return self._grouped(x, routing)
        if how == "padded":
            return self._padded(x, routing)
        if how == "reference":
            return self._reference(x, routing)
        raise ValueError(f"unknown dispatch {how!r}; one of {', '.join(DISPATCHES)}")

    # --- the dispatches -----------------------------------------------------------------------------------------

    def _plain(self) -> bool:
        return all(type(m) is nn.Linear for e in self.members() for m in (e.c_fc, e.c_proj))

    def _fusable(self, x: torch.Tensor) -> bool:
        """Plain fp32 Linears in ``x``'s dtype, no autocast, and no hook that expects the experts' modules to be
        called (calibration statistics, activation observers, attribution): the fused node never calls them."""
        return (self._plain() and not torch.is_autocast_enabled(x.device.type)
                and all(p.dtype == x.dtype and p.device == x.device for p in self.parameters())
                and not _hooked(self))

    def _fused(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        params = [(e.c_fc.weight, e.c_fc.bias, e.c_proj.weight, e.c_proj.bias) for e in self.members()]
        return fused_experts(x, r.token, r.weight, r.counts.tolist(), self.activation, params)

    def _grouped(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        xs = x[r.token]  # (A, d) in expert order
        blocks = xs.split(r.counts.tolist())
        ys = torch.cat([self.expert(e)(b) for e, b in enumerate(blocks) if len(b)]) if len(xs) else xs
        return torch.zeros_like(x).index_add_(0, r.token, ys * r.weight.unsqueeze(-1).to(ys.dtype))

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        fcs = [e.c_fc for e in self.members()]
        projs = [e.c_proj for e in self.members()]
        if not self._plain():
            raise ValueError("the padded dispatch stacks the experts' weights, so it needs plain nn.Linear experts "
                             "(these are quantized or adapted); use dispatch 'grouped'")
        b1 = torch.stack([m.bias for m in fcs]) if fcs[0].bias is not None else None
        b2 = torch.stack([m.bias for m in projs]) if projs[0].bias is not None else None
        return torch.stack([m.weight for m in fcs]), b1, torch.stack([m.weight for m in projs]), b2

    def _padded(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        counts = r.counts.tolist()
        cmax = max(counts, default=0)
        if cmax == 0:
            return torch.zeros_like(x)
        w1, b1, w2, b2 = self._stacked()  # (E, h, d), (E, h), (E, d, h), (E, d)
        starts = torch.cumsum(r.counts, 0) - r.counts
        slot = torch.arange(len(r.token), device=x.device) - starts[r.expert]  # position within its expert
        padded = x.new_zeros(self.num_experts, cmax, self.d_model)
        padded[r.expert, slot] = x[r.token]
        h = torch.bmm(padded, w1.transpose(1, 2))  # (E, C, h)
        if b1 is not None:
            h = h + b1.unsqueeze(1)
        y = torch.bmm(_ACTIVATIONS[self.activation](h), w2.transpose(1, 2))  # (E, C, d)
        if b2 is not None:
            y = y + b2.unsqueeze(1)
        ys = y[r.expert, slot]  # (A, d)
        return torch.zeros_like(x).index_add_(0, r.token, ys * r.weight.unsqueeze(-1).to(ys.dtype))

    def _dense(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        combine = x.new_zeros(x.shape[0], len(self)).index_put_((r.token, r.expert), r.weight.to(x.dtype),
                                                               accumulate=True)
        out = torch.zeros_like(x)
        for e in range(len(self)):
            out = out + combine[:, e : e + 1] * self.expert(e)(x)
        return out

    def _reference(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            (where,) = torch.where(r.expert == e)
            if len(where) == 0:
                continue
            tokens = r.token[where]
            out.index_add_(0, tokens, self.expert(e)(x[tokens]) * r.weight[where].unsqueeze(-1))
        return out
