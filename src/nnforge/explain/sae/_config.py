"""The options of a sparse autoencoder and of its training (:class:`SAEConfig`)."""

from __future__ import annotations

from pydantic import Field, PositiveInt, field_validator

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError

__all__ = ["SAEConfig"]


@config_type("explain.sae")
class SAEConfig(Config):
    """A sparse autoencoder: its architecture and size, and how :func:`~nnforge.explain.train_sae` trains it.

    The dictionary has ``expansion * d_in`` latents. ``k`` is the number of active latents per token of a
    ``topk`` SAE (so its mean L0 is at most ``k``); ``l1_coefficient`` is the sparsity penalty of ``relu-l1``.
    """

    architecture: str = Field("topk", description="a registered SAE architecture: 'topk' or 'relu-l1'")
    d_in: PositiveInt | None = Field(None, description="width of the activations; None: taken from the data")
    expansion: PositiveInt = Field(8, description="latents per input dimension (dictionary = expansion * d_in)")
    k: PositiveInt = Field(32, description="topk: active latents per token")
    aux_k: PositiveInt | None = Field(None, description="topk: dead latents used by the AuxK loss; None: 2 * k")
    aux_coefficient: float = Field(1 / 32, ge=0.0, description="topk: weight of the AuxK loss (0: off)")
    dead_after_tokens: PositiveInt = Field(200_000, description="a latent silent for this many training tokens "
                                           "is dead (for the AuxK loss)")
    l1_coefficient: float = Field(0.1, ge=0.0, description="relu-l1: weight of the L1 penalty on the codes")
    steps: PositiveInt = Field(2000, description="optimizer steps")
    batch_size: PositiveInt = Field(4096, description="tokens per step")
    lr: float = Field(1e-3, gt=0.0, description="Adam's learning rate (after warm-up; cosine decay to 10%)")
    warmup_steps: int = Field(50, ge=0)
    normalize: bool = Field(True, description="scale the inputs to a mean squared norm of d_in (stored in the SAE)")
    seed: int = Field(0, description="initialisation and batch order")

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, name: str) -> str:
        from nnforge.explain.sae._registry import SAE_ARCHITECTURES

        if name not in SAE_ARCHITECTURES:
            raise ValueError(SAE_ARCHITECTURES.unknown_message(name, where="architecture"))
        return name

    @property
    def d_sae(self) -> int:
        """The number of latents (needs ``d_in``)."""
        if self.d_in is None:
            raise ConfigError("SAEConfig.d_in is not set; the dictionary size is expansion * d_in")
        return self.expansion * self.d_in
