"""``moe-gpt``: the char-GPT with mixture-of-experts FFNs, registered as an architecture (task ``char-lm``).

Every ``moe_every``-th block's MLP is an :class:`~nnforge.moe.MoE` (``moe_every: 1``: all of them); the rest of the
model is the char-GPT unchanged. ``forward(idx, targets)`` returns ``(logits, loss)`` as the char-GPT does, the loss
including every layer's balancing loss, so the training loop needs nothing MoE-specific; wrap the call in
:func:`~nnforge.moe.collect_routing` to see the routing. The experts' biases follow the model's ``bias``.

Equal active parameters per token with the dense model: ``k · moe.hidden = mlp_ratio · n_embd`` (the default,
8 experts of 256 with top-2 at n_embd 128, matches the dense 4 · 128 = 512).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field
from torch import nn

from nnforge.config import config_type
from nnforge.models import register
from nnforge.models.char_gpt import CharGPT, CharGPTConfig
from nnforge.moe._layer import MoE, MoEConfig
from nnforge.moe._report import collect_routing

__all__ = ["MoEGPT", "MoEGPTConfig", "build_moe_gpt", "add_balancing_loss"]


@config_type("model.moe-gpt")
class MoEGPTConfig(CharGPTConfig):
    """:class:`~nnforge.models.char_gpt.CharGPTConfig` plus the MoE layers'."""

    moe: MoEConfig = Field(default_factory=MoEConfig)
    moe_every: int = Field(1, ge=1, description="every n-th block gets an MoE FFN (the last of each n)")


class MoEGPT(CharGPT):
    """The char-GPT with MoE FFNs (see the module docstring)."""

    def __init__(self, config: MoEGPTConfig | None = None) -> None:
        config = config or MoEGPTConfig()
        super().__init__(config)
        moe_config = config.moe.model_copy(update={"bias": config.bias})
        blocks: Any = self.transformer["h"]
        for i, block in enumerate(blocks):
            if i % config.moe_every == config.moe_every - 1:
                block.mlp = MoE(config.n_embd, moe_config)
                _init_like_gpt(block.mlp, config.n_layer)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with collect_routing(self) as routing:
            logits, loss = super().forward(idx, targets)
        if loss is not None and self.training and isinstance(routing.loss, torch.Tensor):
            loss = loss + routing.loss
        return logits, loss

    def moe_layers(self) -> dict[str, MoE]:
        """The MoE layers by module path."""
        return {n: m for n, m in self.named_modules() if isinstance(m, MoE)}


def add_balancing_loss(model: nn.Module, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` (a loss from a forward of ``model``) plus the balancing losses of ``model``'s MoE layers in
    training mode, so that a model that does not add them itself (an upcycled char-GPT) is balanced as configured.
    A :class:`MoEGPT`, a model without MoE layers, or a model in evaluation mode: ``compute()`` unchanged."""
    if isinstance(model, MoEGPT) or not model.training or not any(isinstance(m, MoE) for m in model.modules()):
        return compute()
    with collect_routing(model) as routing:
        loss = compute()
    return loss + routing.loss if isinstance(routing.loss, torch.Tensor) else loss


def _init_like_gpt(moe: MoE, n_layer: int) -> None:
    """GPT-2 initialisation for the experts and router (normal 0.02; the output projections scaled by depth)."""
    with torch.no_grad():
        for expert in [*moe.experts.members(), *(moe.shared.members() if moe.shared is not None else [])]:
            nn.init.normal_(expert.c_fc.weight, std=0.02)
            nn.init.normal_(expert.c_proj.weight, std=0.02 / math.sqrt(2 * n_layer))
            for linear in (expert.c_fc, expert.c_proj):
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
        nn.init.normal_(moe.router.gate.weight, std=0.02)


@register("moe-gpt", task="char-lm")
def build_moe_gpt(**options: Any) -> nn.Module:
    """Build a :class:`MoEGPT`; options are :class:`MoEGPTConfig` fields (``moe`` a dict of MoEConfig fields)."""
    return MoEGPT(MoEGPTConfig(**options))
