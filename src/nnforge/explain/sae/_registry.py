"""The registry of sparse-autoencoder architectures: how pre-activations become sparse codes, and the loss terms
that keep the codes sparse and the latents alive.

An architecture registers an instance of itself from its own module with ``SAE_ARCHITECTURES.register(name)``;
nothing else names it. It is stateless: everything it needs arrives as arguments (the SAE, its config, the
batch), so one instance serves every SAE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch

from nnforge.registry import Registry

if TYPE_CHECKING:
    from nnforge.explain.sae._config import SAEConfig
    from nnforge.explain.sae._module import SAE

__all__ = ["SAE_ARCHITECTURES", "SAEArchitecture", "Codes", "fraction_unexplained"]


class Codes(NamedTuple):
    """Sparse codes of N tokens: ``values`` (N, d_sae) with ``indices`` None (dense, zeros where a latent is off),
    or ``values`` (N, m) at latent ``indices`` (N, m) (the m candidates of each token; a value of 0 is off).

    The second form lets a TopK SAE decode with a gather of k decoder rows per token instead of a dense product.
    """

    values: torch.Tensor
    indices: torch.Tensor | None = None

    def dense(self, d_sae: int) -> torch.Tensor:
        """The codes as an (N, d_sae) tensor."""
        if self.indices is None:
            return self.values
        return self.values.new_zeros(len(self.values), d_sae).scatter(-1, self.indices, self.values)

    def active(self) -> torch.Tensor:
        """Active latents per token: (N,)."""
        return (self.values > 0).sum(-1)

    def fired(self, d_sae: int) -> torch.Tensor:
        """(d_sae,) bool: which latents are active on at least one token."""
        if self.indices is None:
            return (self.values > 0).any(0)
        out = torch.zeros(d_sae, dtype=torch.bool, device=self.values.device)
        out[self.indices[self.values > 0]] = True
        return out


class SAEArchitecture(Protocol):
    """What an SAE architecture provides.

    ``activate`` maps pre-activations ``(N, d_sae)`` to :class:`Codes`; ``extra_loss`` returns the terms added to
    the reconstruction loss during training, by name (the trainer logs each and sums them). ``x`` and ``x_hat``
    are in the SAE's normalised units; ``dead`` is a ``(d_sae,)`` bool mask of latents that have not fired for
    ``dead_after_tokens`` tokens.
    """

    def activate(self, pre: torch.Tensor, config: SAEConfig) -> Codes: ...

    def extra_loss(self, sae: SAE, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, codes: Codes,
                   dead: torch.Tensor) -> dict[str, torch.Tensor]: ...


SAE_ARCHITECTURES: Registry[SAEArchitecture] = Registry("SAE architecture")


def fraction_unexplained(target: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """``sum ||target - estimate||² / sum ||target - mean(target)||²`` over the rows: 0 is a perfect fit, 1 is
    no better than the mean (the fraction of variance unexplained, FVU)."""
    residual = (target - estimate).pow(2).sum()
    total = (target - target.mean(0, keepdim=True)).pow(2).sum()
    return residual / total.clamp_min(torch.finfo(target.dtype).tiny)
