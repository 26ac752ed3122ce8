"""``relu-l1``: the classic sparse autoencoder (Bricken et al. 2023; Cunningham et al. 2023).

Codes are ``ReLU(pre-activations)``; an L1 penalty on them, weighted by ``l1_coefficient``, trades reconstruction
for sparsity, so the number of active latents per token is whatever the penalty buys (unlike ``topk``). The
decoder's rows are kept at unit norm, so the penalty cannot be dodged by shrinking codes and growing the decoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nnforge.explain.sae._registry import SAE_ARCHITECTURES, Codes

if TYPE_CHECKING:
    from nnforge.explain.sae._config import SAEConfig
    from nnforge.explain.sae._module import SAE

__all__ = ["ReluL1"]


class ReluL1:
    """ReLU codes with an L1 penalty (per token, in units of the normalised inputs' RMS norm)."""

    def activate(self, pre: torch.Tensor, config: SAEConfig) -> Codes:
        return Codes(torch.relu(pre))

    def extra_loss(self, sae: SAE, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, codes: Codes,
                   dead: torch.Tensor) -> dict[str, torch.Tensor]:
        # inputs are normalised to a mean squared norm of d_in, so codes are O(1): divide by sqrt(d_in) to make the
        # coefficient mean the same thing at every width
        l1 = codes.values.abs().sum(-1).mean() / sae.d_in ** 0.5
        return {"l1": sae.config.l1_coefficient * l1}


SAE_ARCHITECTURES.add("relu-l1", ReluL1())
