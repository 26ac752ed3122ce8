"""SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam").

Adam run in the eigenbasis of Shampoo's preconditioner. For a weight matrix with gradient ``G`` (m × n)
it keeps the Shampoo statistics ``L ← βs·L + (1-βs)·G Gᵀ`` and ``R ← βs·R + (1-βs)·Gᵀ G``, their
eigenvectors ``Q_L``, ``Q_R``, and Adam's moments; the second moment lives in the rotated space::

    G' = Q_Lᵀ G Q_R ;  v ← β2·v + (1-β2)·G'² ;  m ← β1·m + (1-β1)·G
    θ ← θ - lr·(bias corr.)·Q_L [ (Q_Lᵀ m Q_R) / (√v + ε) ] Q_Rᵀ - lr·wd·θ

The eigenvectors are refreshed every ``precondition_frequency`` steps by one power iteration and a QR
decomposition (eigh at the first step). As in the reference implementation (nikhilvyas/SOAP), a
parameter's first step only initialises its state (the statistics and, for matrices, the eigenbasis from
that gradient) and applies **no update**: a basis computed from the very gradient it rotates leaves only
float rounding noise off its diagonal, which Adam's ``m / √v`` would blow up into an O(1) step. eigh and QR
run in float32 for bfloat16/float16 parameters (torch has no half-precision kernels for them). 1-D parameters (biases, norms) get plain Adam. A side longer
than ``max_precond_dim`` keeps the identity basis on that side (no m² or n² memory), as in the paper.
Tensors with more than 2 dimensions (conv kernels) are treated as ``(shape[0], rest)`` matrices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, PositiveInt

from nnforge.config import Config, config_type
from nnforge.optim._base import LR, Beta, Eps, RealParamsOnly, WeightDecay, run_closure, with_grads
from nnforge.optim._registry import cols_square, like_param, register_optimizer, rows_square

__all__ = ["SOAP", "SOAPConfig", "soap_update"]


@config_type("optim.soap")
class SOAPConfig(Config):
    """Options of :class:`SOAP`."""

    lr: LR = 3e-3
    betas: tuple[Beta, Beta] = (0.95, 0.95)
    shampoo_beta: Beta | None = Field(None, description="EMA of the Shampoo statistics (None: betas[1])")
    eps: Eps = 1e-8
    weight_decay: WeightDecay = 0.01
    precondition_frequency: PositiveInt = Field(10, description="steps between eigenbasis refreshes")
    max_precond_dim: PositiveInt = Field(10000, description="sides longer than this keep the identity basis")


# --- rotations -----------------------------------------------------------------------------------------

def _project(x: torch.Tensor, st: dict[str, Any]) -> torch.Tensor:
    """Into the eigenbasis: Q_Lᵀ x Q_R (sides without Q are the identity)."""
    if "QL" in st:
        x = st["QL"].T @ x
    if "QR" in st:
        x = x @ st["QR"]
    return x


def _project_back(x: torch.Tensor, st: dict[str, Any]) -> torch.Tensor:
    """Out of the eigenbasis: Q_L x Q_Rᵀ."""
    if "QL" in st:
        x = st["QL"] @ x
    if "QR" in st:
        x = x @ st["QR"].T
    return x


def _wide_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is a half-precision tensor (linalg has no bf16/fp16 kernels)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _eigenvectors(gg: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a symmetric PSD matrix, largest eigenvalue first."""
    g = _wide_dtype(gg)
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    _, q = torch.linalg.eigh(g + 1e-30 * eye)
    return torch.flip(q, [1]).to(gg.dtype)


def _refresh(st: dict[str, Any]) -> None:
    """One power iteration + QR per side; reorder v's rows/columns to follow the sorted eigenvalues."""
    for side, dim in (("L", 0), ("R", 1)):
        if f"Q{side}" not in st:
            continue
        gg, q = st[f"GG{side}"], st[f"Q{side}"]
        order = torch.argsort(torch.diag(q.T @ gg @ q), descending=True)
        st["exp_avg_sq"] = st["exp_avg_sq"].index_select(dim, order)
        st[f"Q{side}"] = torch.linalg.qr(_wide_dtype(gg @ q[:, order]))[0].to(q.dtype)


def _init_state(st: dict[str, Any], p: torch.Tensor, g: torch.Tensor, group: dict[str, Any]) -> None:
    st.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(g))
    if g.ndim == 2:
        for side, n in (("L", g.shape[0]), ("R", g.shape[1])):
            if n <= group["max_precond_dim"]:
                st[f"GG{side}"] = torch.zeros(n, n, dtype=g.dtype, device=g.device)
        _accumulate(st, g, group)
        for side in ("L", "R"):
            if f"GG{side}" in st:
                st[f"Q{side}"] = _eigenvectors(st[f"GG{side}"])


def _accumulate(st: dict[str, Any], g: torch.Tensor, group: dict[str, Any]) -> None:
    beta = group["shampoo_beta"] if group["shampoo_beta"] is not None else group["betas"][1]
    if "GGL" in st:
        st["GGL"].lerp_(g @ g.T, 1 - beta)
    if "GGR" in st:
        st["GGR"].lerp_(g.T @ g, 1 - beta)


# --- the optimizer -------------------------------------------------------------------------------------

class SOAP(RealParamsOnly, torch.optim.Optimizer):
    """SOAP: Adam in Shampoo's eigenbasis (module docstring)."""

    def __init__(self, params: Any, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),
                 shampoo_beta: float | None = None, eps: float = 1e-8, weight_decay: float = 0.01,
                 precondition_frequency: int = 10, max_precond_dim: int = 10000) -> None:
        defaults = {"lr": lr, "betas": betas, "shampoo_beta": shampoo_beta, "eps": eps, "weight_decay": weight_decay,
                    "precondition_frequency": precondition_frequency, "max_precond_dim": max_precond_dim}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = with_grads(group, "SOAP")
            for p, grad in zip(params, grads, strict=True):
                soap_update(p, grad, self.state[p], group)
        return loss


def soap_update(p: torch.Tensor, grad: torch.Tensor, st: dict[str, Any], group: dict[str, Any]) -> None:
    """One SOAP update of ``p`` with its state ``st`` and a group holding SOAP's options (also used by hybrids)."""
    g = grad.reshape(grad.shape[0], -1) if grad.ndim > 2 else grad
    if "step" not in st:  # first step: initialise from this gradient, no update (module docstring)
        _init_state(st, p, g, group)
        return
    st["step"] += 1
    beta1, beta2 = group["betas"]
    st["exp_avg"].lerp_(grad, 1 - beta1)
    gp = _project(g, st)  # (m, n) in the eigenbasis
    st["exp_avg_sq"].mul_(beta2).addcmul_(gp, gp, value=1 - beta2)
    m = _project(st["exp_avg"].reshape(g.shape), st)
    direction = _project_back(m / (st["exp_avg_sq"].sqrt() + group["eps"]), st)
    step_size = group["lr"] * math.sqrt(1 - beta2 ** st["step"]) / (1 - beta1 ** st["step"])
    p.add_(direction.reshape(p.shape), alpha=-step_size)
    if group["weight_decay"]:
        p.mul_(1 - group["lr"] * group["weight_decay"])
    if g.ndim == 2:
        _accumulate(st, g, group)
        if st["step"] % group["precondition_frequency"] == 0:
            _refresh(st)


@register_optimizer("soap", SOAPConfig, "Vyas et al. (2024), SOAP: Improving and Stabilizing Shampoo using Adam",
                    state={"exp_avg": like_param, "exp_avg_sq": like_param, "GGL": rows_square, "QL": rows_square,
                           "GGR": cols_square, "QR": cols_square})
def build_soap(params: list[Any], config: SOAPConfig) -> torch.optim.Optimizer:
    """:class:`SOAP` with ``config``'s options."""
    return SOAP(params, **config.model_dump())
