"""A character-level GPT in the style of nanoGPT's ``model.py``, registered as ``"char-gpt"``.

Pre-norm transformer blocks (causal self-attention with ``F.scaled_dot_product_attention``, GELU MLP),
learned position embeddings, and an LM head tied to the token embedding. The defaults are nanoGPT's
``shakespeare_char`` CPU configuration (4 layers, 4 heads, 128 wide, 64-token context) for the 84-symbol
``shakespeare-char`` vocabulary::

    from nnforge.models import build
    model = build("char-gpt")                      # CharGPTConfig defaults
    logits, loss = model(idx, targets)             # idx, targets: (B, T) int64 → logits (B, T, V)
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from nnforge.config import Config, config_type
from nnforge.errors import ModelError
from nnforge.models._registry import ARCHITECTURES, DATA_KINDS

__all__ = ["CharGPT", "CharGPTConfig"]


@config_type("model.char-gpt")
class CharGPTConfig(Config):
    """Options of :class:`CharGPT`."""

    n_layer: PositiveInt = 4
    n_head: PositiveInt = 4
    n_embd: PositiveInt = 128
    mlp_ratio: PositiveInt = Field(4, description="the MLP's hidden width as a multiple of n_embd")
    block_size: PositiveInt = Field(64, description="longest context, in characters")
    vocab_size: PositiveInt = 84
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = Field(False, description="biases in Linear layers and LayerNorms")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> CharGPTConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


# --- blocks -----------------------------------------------------------------------------------------------

class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's has no ``bias=False`` switch on every version)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q, k, v projection."""

    def __init__(self, config: CharGPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()  # batch, sequence length, embedding width
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 × (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: C → rC → GELU → C (r = ``mlp_ratio``, 4 in nanoGPT)."""

    def __init__(self, config: CharGPTConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: CharGPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


# --- the model --------------------------------------------------------------------------------------------

class CharGPT(nn.Module):
    """The GPT: token + position embeddings → blocks → final norm → LM head (tied to the embedding)."""

    def __init__(self, config: CharGPTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CharGPTConfig()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "wpe": nn.Embedding(config.block_size, config.n_embd),
            "drop": nn.Dropout(config.dropout),
            "h": nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            "ln_f": LayerNorm(config.n_embd, bias=config.bias),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer["wte"].weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of the residual projections (GPT-2)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Parameters, counting the tied embedding once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) for token ids ``idx`` (B, T), and the cross-entropy against ``targets`` if given."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ModelError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer["drop"](self.transformer["wte"](idx) + self.transformer["wpe"](pos))  # (B, T, C)
        for block in cast(nn.ModuleList, self.transformer["h"]):
            x = block(x)
        logits = self.lm_head(self.transformer["ln_f"](x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Extend ``idx`` (B, T) by sampling ``max_new_tokens`` tokens; returns (B, T + max_new_tokens).

        ``temperature=0`` is greedy decoding (the most likely token each time, no sampling).

        Raises:
            ModelError: the prompt is not a non-empty (B, T) integer tensor, or temperature/max_new_tokens < 0.
        """
        if idx.dim() != 2 or idx.shape[0] == 0 or idx.shape[1] == 0 or idx.is_floating_point():
            raise ModelError(f"generate needs a prompt of at least one token: a (batch, tokens) integer tensor; "
                             f"got {idx.dtype} of shape {tuple(idx.shape)}")
        if not temperature >= 0:
            raise ModelError(f"temperature must be >= 0 (0: greedy); got {temperature}")
        if max_new_tokens < 0:
            raise ModelError(f"max_new_tokens must be >= 0; got {max_new_tokens}")
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            last = logits[:, -1, :]  # (B, V)
            if temperature == 0:
                nxt = last.argmax(-1, keepdim=True)
            else:
                nxt = torch.multinomial(F.softmax(last / temperature, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx


@ARCHITECTURES.register("char-gpt")
def build_char_gpt(**options: Any) -> nn.Module:
    """Build a :class:`CharGPT`; options are :class:`CharGPTConfig` fields (validated)."""
    return CharGPT(CharGPTConfig(**options))

DATA_KINDS["char-gpt"] = "char-lm"
