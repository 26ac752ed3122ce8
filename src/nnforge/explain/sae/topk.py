"""``topk``: the TopK sparse autoencoder of Gao et al. 2024 ("Scaling and evaluating sparse autoencoders").

Each token keeps its ``k`` largest pre-activations (then a ReLU), so at most ``k`` latents are active per token
by construction: no L1 penalty to tune, no shrinkage. Against dead latents: the encoder starts as the decoder's
transpose (done for every architecture by :class:`~nnforge.explain.sae.SAE`), and the auxiliary AuxK loss makes
the ``aux_k`` largest *dead* latents reconstruct what the live ones missed, weighted by ``aux_coefficient``
(1/32 in the paper).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from nnforge.explain.sae._registry import SAE_ARCHITECTURES, Codes, fraction_unexplained

if TYPE_CHECKING:
    from nnforge.explain.sae._config import SAEConfig
    from nnforge.explain.sae._module import SAE

__all__ = ["TopK", "top_k"]


def _largest(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row of ``pre`` (N, d) and their columns, both (N, k), in no order.

    On the CPU NumPy's introselect (``argpartition``) finds them a few times faster than ``torch.topk``; the
    values are then gathered from ``pre``, so gradients flow as through ``topk``.
    """
    k = min(k, pre.shape[-1])
    if pre.device.type == "cpu" and pre.dtype == torch.float32 and k < pre.shape[-1]:
        picked = np.argpartition(pre.detach().numpy(), pre.shape[-1] - k, axis=-1)[:, -k:]
        indices = torch.from_numpy(np.ascontiguousarray(picked))
        return pre.gather(-1, indices), indices
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values, indices


def top_k(pre: torch.Tensor, k: int) -> Codes:
    """Codes keeping the ReLU of the ``k`` largest pre-activations of each token (at most ``k`` active)."""
    values, indices = _largest(pre, k)
    return Codes(torch.relu(values), indices)


class TopK:
    """TopK activation with the AuxK loss against dead latents."""

    def activate(self, pre: torch.Tensor, config: SAEConfig) -> Codes:
        return top_k(pre, config.k)

    def extra_loss(self, sae: SAE, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, codes: Codes,
                   dead: torch.Tensor) -> dict[str, torch.Tensor]:
        config = sae.config
        dead_latents = dead.nonzero().squeeze(-1)  # (n_dead,)
        if config.aux_coefficient == 0 or len(dead_latents) == 0:
            return {}
        # the dead latents' best guess at the live ones' error (no decoder bias: the error has mean ~0)
        values, picked = _largest(pre[:, dead_latents], min(config.aux_k or 2 * config.k, len(dead_latents)))
        guess = sae.decode_normalized(Codes(torch.relu(values), dead_latents[picked]), bias=False)
        error = (x - x_hat).detach()  # (N, d_in)
        return {"auxk": config.aux_coefficient * fraction_unexplained(error, guess)}


SAE_ARCHITECTURES.add("topk", TopK())
