"""Batched Muon: nnforge's own Muon + AdamW hybrid, built for small models on CPU.

Same rule as Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"; the
``match_rms_adamw`` scaling of Liu et al. 2025, "Muon is Scalable for LLM Training"): nesterov momentum,
then the update of each hidden matrix is replaced by its orthogonalisation, computed with the quintic
Newton–Schulz iteration. What differs from ``torch.optim.Muon``:

- speed: matrices of the same shape (transposed to wide form) are stacked and orthogonalised together
  with batched matmuls (``baddbmm``), a few large kernels instead of many small ones; in bfloat16 where
  the hardware has it, else in float32 (``ns_dtype="auto"`` measures both once per process on a CPU:
  on a CPU without native bf16 — no AMX / AVX512-BF16 — bf16 matmuls are emulated and about 3× slower
  than fp32, while ``torch.optim.Muon`` always uses bf16);
  momentum and weight decay use ``torch._foreach_*``; the other parameters (embeddings, output layer,
  norms, biases; see :func:`~nnforge.optim.param_groups_for`) get torch's fused AdamW kernel
  (``torch._fused_adamw_``) inside the same object, so there is one ``param_groups`` list and one
  ``state_dict`` for schedulers and checkpoints;
- steps: a fused ``(3n, n)`` weight (q, k and v of a fused attention projection) is orthogonalised as
  three ``(n, n)`` blocks (``split_fused=3``, the default), as modded-nanoGPT does with separate q, k, v
  matrices: on the char-GPT this reaches a given loss in fewer steps than orthogonalising the whole
  ``(3n, n)`` matrix (``split_fused=1`` reproduces torch's Muon);
- options: ``row_norm=True`` adds NorMuon's per-row normalisation (Li et al. 2025, "NorMuon: Making
  Muon more efficient and scalable"; registered with it on as ``normuon``, :class:`NorMuonConfig`);
  ``ns_coefficients="polar-express"`` swaps Muon's fixed quintic for Polar Express's per-iteration ones
  (Amsel et al. 2025); ``rest="soap"`` trains the non-matrix part with SOAP.

Groups carry ``use_muon``: True for the Muon rule (``lr`` on AdamW's scale), False for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt

from nnforge.config import Config, config_type
from nnforge.optim._base import (
    LR,
    Beta,
    Eps,
    RealParamsOnly,
    WeightDecay,
    check_all_dense,
    run_closure,
    split_flag,
    with_grads,
)
from nnforge.optim._groups import MATRIX_KEY
from nnforge.optim._registry import ADAM_STATE, like_param, register_optimizer
from nnforge.optim.soap import soap_update

__all__ = ["BatchedMuon", "BatchedMuonConfig", "NorMuonConfig", "orthogonalize"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# Polar Express (Amsel, Persson, Musco & Gower 2025, "The Polar Express: Optimal Matrix Sign Methods and Their
# Application to the Muon Algorithm"): one minimax-optimal quintic per iteration, for 5 iterations, with the
# safety factor 1.02 applied to the normalisation (the coefficients of modded-nanoGPT). Later iterations reuse
# the last quintic, which is a contraction towards 1.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02


@config_type("optim.batched-muon")
class BatchedMuonConfig(Config):
    """Options of :class:`BatchedMuon`."""

    lr: LR = Field(0.02, description="lr of the matrices (AdamW scale: update RMS = 0.2·lr)")
    momentum: Beta = 0.95
    nesterov: bool = True
    ns_steps: PositiveInt = 5
    ns_dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", description="Newton–Schulz precision; auto: "
                                                             "bf16 on GPU, the faster of bf16/fp32 on this CPU")
    ns_coefficients: Literal["jordan", "polar-express"] = Field(
        "jordan", description="Newton–Schulz quintics: Muon's fixed one, or Polar Express's per-iteration ones")
    weight_decay: WeightDecay = 0.1
    split_fused: PositiveInt = Field(3, description="orthogonalise (k·n, n) matrices as k (n, n) blocks (fused q, k, v)")
    row_norm: bool = Field(False, description="NorMuon: normalise rows of the orthogonal update by their RMS EMA")
    row_norm_beta: Beta = Field(0.95, description="EMA factor of NorMuon's per-row second moment")
    cautious: bool = Field(False, description="Cautious masking of update entries that disagree with the gradient")
    rest: Literal["adamw", "soap"] = Field("adamw", description="rule for embeddings, output layer, norms, biases")
    adamw_lr: LR = Field(6e-3, description="lr of the AdamW part (embeddings, output layer, norms, biases)")
    adamw_betas: tuple[Beta, Beta] = (0.9, 0.95)
    adamw_eps: Eps = 1e-8


# --- Newton–Schulz ---------------------------------------------------------------------------------------

_CPU_NS_DTYPE: list[torch.dtype] = []  # measured once per process


def ns_dtype_for(device: torch.device, choice: str = "auto") -> torch.dtype:
    """The Newton–Schulz dtype: as asked, bf16 on GPUs, and on a CPU the faster of bf16 and fp32 (measured once)."""
    if choice != "auto":
        return torch.bfloat16 if choice == "bfloat16" else torch.float32
    if device.type != "cpu":
        return torch.bfloat16
    if not _CPU_NS_DTYPE:
        import time

        x = torch.randn(4, 128, 512)
        best = (float("inf"), torch.float32)
        for dtype in (torch.bfloat16, torch.float32):
            orthogonalize(x, 1, dtype=dtype)  # warm-up
            t0 = time.perf_counter()
            for _ in range(3):
                orthogonalize(x, 5, dtype=dtype)
            best = min(best, (time.perf_counter() - t0, dtype), key=lambda t: t[0])
        _CPU_NS_DTYPE.append(best[1])
    return _CPU_NS_DTYPE[0]


def orthogonalize(x: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16,
                  coefficients: str = "jordan") -> torch.Tensor:
    """Approximate U Vᵀ of each matrix in a (k, r, c) stack with r <= c (quintic Newton–Schulz in ``dtype``).

    ``coefficients="jordan"`` repeats Muon's fixed quintic (singular values end spread over about 0.7–1.2);
    ``"polar-express"`` uses a different optimal quintic at each iteration, which drives the singular
    values much closer to 1 in the same number of matmuls (see ``POLAR_EXPRESS_COEFFICIENTS``).
    """
    x = x.to(dtype)
    norm = x.norm(dim=(-2, -1), keepdim=True)
    if coefficients == "polar-express":
        x = x / (norm * POLAR_EXPRESS_SAFETY).clamp(min=eps)
        schedule = [POLAR_EXPRESS_COEFFICIENTS[min(i, len(POLAR_EXPRESS_COEFFICIENTS) - 1)] for i in range(steps)]
    else:
        x = x / norm.clamp(min=eps)
        schedule = [NS_COEFFICIENTS] * steps
    for a, b, c in schedule:
        gram = x @ x.mT  # (k, r, r)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
        x = torch.baddbmm(x, poly, x, beta=a)  # a·X + (b·A + c·A²)·X
    return x


def _blocks(p: torch.Tensor, split: int) -> list[torch.Tensor]:
    """Views of ``p`` as 2-D matrices: ``split`` row blocks of a fused square-block matrix, else p itself."""
    m = p.reshape(p.shape[0], -1)
    if split > 1 and m.shape[0] == split * m.shape[1]:
        return list(m.chunk(split, dim=0))
    return [m]


def _orthogonal_updates(updates: list[torch.Tensor], split: int, steps: int, dtype: torch.dtype = torch.bfloat16,
                        coefficients: str = "jordan") -> list[tuple[torch.Tensor, float]]:
    """Orthogonalise every matrix in ``updates`` (bucketed by shape); return (update, rms-match scale)."""
    pieces = [_blocks(u, split) for u in updates]
    buckets: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, blocks in enumerate(pieces):
        for j, b in enumerate(blocks):
            buckets.setdefault((min(b.shape), max(b.shape)), []).append((i, j))
    out: list[list[torch.Tensor]] = [list(blocks) for blocks in pieces]
    for members in buckets.values():
        stack = torch.stack([_wide(pieces[i][j]) for i, j in members])  # (k, r, c)
        ortho = orthogonalize(stack, steps, dtype=dtype, coefficients=coefficients)
        for (i, j), o in zip(members, ortho.unbind(0), strict=True):
            out[i][j] = o if pieces[i][j].shape == o.shape else o.mT
    results = []
    for u, blocks in zip(updates, out, strict=True):
        rows, cols = blocks[0].shape
        full = torch.cat(blocks, dim=0) if len(blocks) > 1 else blocks[0]
        results.append((full.reshape(u.shape).to(u.dtype), 0.2 * math.sqrt(max(rows, cols))))
    return results


def _wide(m: torch.Tensor) -> torch.Tensor:
    return m.mT if m.shape[0] > m.shape[1] else m


# --- the optimizer ---------------------------------------------------------------------------------------

class BatchedMuon(RealParamsOnly, torch.optim.Optimizer):
    """Muon on ``use_muon`` groups, AdamW on the others, in one optimizer (module docstring)."""

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, ns_dtype: str = "auto", ns_coefficients: str = "jordan", weight_decay: float = 0.1, split_fused: int = 3, row_norm: bool = False,
                 row_norm_beta: float = 0.95, cautious: bool = False, rest: str = "adamw", betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8) -> None:
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps, "ns_dtype": ns_dtype,
                    "ns_coefficients": ns_coefficients,
                    "weight_decay": weight_decay, "split_fused": split_fused, "row_norm": row_norm,
                    "row_norm_beta": row_norm_beta, "cautious": cautious, "rest": rest, "betas": betas, "eps": eps, MATRIX_KEY: True,
                    # SOAP's options, read when rest == "soap"
                    "shampoo_beta": None, "precondition_frequency": 10, "max_precond_dim": 10000}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = run_closure(closure)
        check_all_dense(self.param_groups, "BatchedMuon")
        for group in self.param_groups:
            params, grads = with_grads(group, "BatchedMuon")
            if params:
                (self._muon if group[MATRIX_KEY] else self._adamw)(group, params, grads)
        return loss

    def _muon(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
        mu, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        torch._foreach_lerp_(bufs, grads, 1 - mu)
        updates = list(torch._foreach_lerp(grads, bufs, mu)) if group["nesterov"] else bufs
        dtype = ns_dtype_for(params[0].device, group.get("ns_dtype", "auto"))
        ortho = _orthogonal_updates(updates, group["split_fused"], group["ns_steps"], dtype,
                                    group.get("ns_coefficients", "jordan"))
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        for p, g, (u, scale) in zip(params, grads, ortho, strict=True):
            if group["cautious"]:  # Liang et al. 2024: keep entries that agree with the gradient, rescale
                mask = (u * g > 0).to(u.dtype)
                u = u * mask * (mask.numel() / (float(mask.sum()) + 1.0))
            if group["row_norm"]:
                u, scale = self._row_normalized(p, u, group["row_norm_beta"])
            p.add_(u, alpha=-lr * scale)

    def _row_normalized(self, p: torch.Tensor, u: torch.Tensor, beta: float) -> tuple[torch.Tensor, float]:
        """NorMuon (Li et al. 2025): divide each output row by the EMA of its RMS, then match AdamW's RMS."""
        rows = u.reshape(u.shape[0], -1)  # (out, in)
        sq = self.state[p].setdefault("row_sq", torch.zeros(rows.shape[0], 1, dtype=u.dtype, device=u.device))
        sq.lerp_(rows.square().mean(dim=1, keepdim=True), 1 - beta)
        rows = rows / (sq.sqrt() + 1e-8)
        scale = 0.2 * math.sqrt(rows.numel()) / float(rows.norm().clamp(min=1e-12))
        return rows.reshape(u.shape), scale

    def _adamw(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        if group["rest"] == "soap":
            for p, grad in zip(params, grads, strict=True):
                soap_update(p, grad, self.state[p], group)
            return
        for p in params:
            if "exp_avg" not in self.state[p]:
                self.state[p].update(step=torch.zeros((), dtype=torch.float32, device=p.device), exp_avg=torch.zeros_like(p),
                                     exp_avg_sq=torch.zeros_like(p))
            elif self.state[p]["step"].device != p.device:  # load_state_dict leaves "step" where it was saved
                self.state[p]["step"] = self.state[p]["step"].to(p.device, torch.float32)  # the kernel reads it there
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        steps = [st["step"] for st in states]
        torch._foreach_add_(steps, 1)  # the fused kernel reads the incremented step for bias correction
        torch._fused_adamw_(params, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],
                            [], steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                            weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False, maximize=False)


_STATE = {**ADAM_STATE, "momentum_buffer": like_param}  # AdamW (or SOAP) state on the non-matrix part


def _row_sq(shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    """NorMuon's second moment of each output row (neuron)."""
    return {(shape[0], 1)}


@register_optimizer("batched-muon", BatchedMuonConfig,
                    "Jordan et al. (2024), Muon: An optimizer for hidden layers in neural networks",
                    matrix_aware=True, state=_STATE)
def build_batched_muon(params: list[Any], config: BatchedMuonConfig) -> torch.optim.Optimizer:
    """:class:`BatchedMuon` with ``config``'s options (``adamw_*`` apply to the non-matrix groups)."""
    groups = []
    for g in split_flag(params, MATRIX_KEY):
        groups.append(g if g[MATRIX_KEY] else {"lr": config.adamw_lr, **g})
    return BatchedMuon(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                       ns_steps=config.ns_steps, ns_dtype=config.ns_dtype,
                       ns_coefficients=config.ns_coefficients, weight_decay=config.weight_decay, split_fused=config.split_fused,
                       row_norm=config.row_norm, row_norm_beta=config.row_norm_beta, cautious=config.cautious,
                       rest=config.rest,
                       betas=config.adamw_betas,
                       eps=config.adamw_eps)


@config_type("optim.normuon")
class NorMuonConfig(BatchedMuonConfig):
    """Options of ``normuon``: :class:`BatchedMuon` with NorMuon's per-neuron normalisation switched on.

    NorMuon (Li et al. 2025, "NorMuon: Making Muon more efficient and scalable") keeps an EMA of the mean
    square of each output row (neuron) of the orthogonalised update, divides the row by its root, and rescales
    the whole update to AdamW's RMS (0.2, Moonlight's rule). Orthogonalisation balances the directions of an
    update but leaves the neurons' step sizes uneven; the second moment evens them out, as Adam does per entry.
    Because the update RMS is then exactly 0.2·lr (Muon's quintic leaves it near 0.18·lr), the same lr is a
    slightly larger step than ``batched-muon``'s. The default lr (5e-3) is the one that did best on the
    char-GPT benchmark (``benchmarks/optim/charlm.py``, one seed; see ``docs/optim.md``).
    """

    lr: LR = Field(0.005, description="lr of the matrices (AdamW scale: update RMS = 0.2·lr exactly)")
    row_norm: bool = Field(True, description="NorMuon: normalise rows of the orthogonal update by their RMS EMA")


@register_optimizer("normuon", NorMuonConfig,
                    "Li, Liu, Liang, Chen & Zhao (2025), NorMuon: Making Muon more efficient and scalable",
                    matrix_aware=True, state={**_STATE, "row_sq": _row_sq})
def build_normuon(params: list[Any], config: NorMuonConfig) -> torch.optim.Optimizer:
    """:class:`BatchedMuon` with NorMuon's row normalisation (``config.row_norm``, True by default)."""
    return build_batched_muon(params, config)
