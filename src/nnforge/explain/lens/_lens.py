"""The logit lens and the tuned lens: reading next-token predictions off every layer of a GPT's residual stream.

The *logit lens* (nostalgebraist 2020) applies the model's own final norm and LM head to the residual stream after
each block, as if the model stopped there. The *tuned lens* (Belrose et al. 2023, "Eliciting latent predictions
from transformers with the tuned lens") first passes each layer's stream through a learned affine *translator*
``h + A h + b`` (A, b start at zero, so it starts as the logit lens), trained to minimise the KL divergence from
the model's final distribution; the last layer needs none. Layer ``i`` is the stream after block ``i``, layer 0
the embeddings, layer ``n_layer`` the model's own output.

Models: the char-GPT and anything with its layout (``transformer.h``, ``transformer.ln_f``, ``lm_head``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from nnforge.config import Config, config_type, load_config
from nnforge.errors import DataError, IntegrityError, ModelError, check_output_path
from nnforge.explain.sae import capture, residual_sites
from nnforge.models.text import eval_mode

__all__ = ["TunedLensConfig", "TunedLens", "residual_stream", "lens_logits", "train_tuned_lens"]

log = logging.getLogger(__name__)
_METADATA_KEY = "nnforge.tuned_lens.config"


@config_type("explain.tuned-lens")
class TunedLensConfig(Config):
    """How :func:`train_tuned_lens` trains the translators (Adam, the model frozen)."""

    steps: PositiveInt = Field(300, description="optimizer steps (each one batch, all layers at once)")
    lr: float = Field(1e-3, gt=0.0, description="Adam's learning rate (linear decay to 0)")
    weight_decay: float = Field(0.0, ge=0.0, description="Adam's weight decay on the translators")
    seed: int = Field(0, description="the order in which batches are drawn")


def _parts(model: nn.Module) -> tuple[int, nn.Module, nn.Module]:
    """(number of blocks, final norm, LM head) of a model with the char-GPT's layout."""
    modules = dict(model.named_modules())
    if not {"transformer.h", "transformer.ln_f", "lm_head"} <= set(modules) or not residual_sites(model):
        raise ModelError(f"{type(model).__name__}: the lenses read models with the char-GPT's layout "
                         "(transformer.h, transformer.ln_f, lm_head)")
    return len(residual_sites(model)) - 1, modules["transformer.ln_f"], modules["lm_head"]


def _ids(x: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor]) -> torch.Tensor:
    ids = x[0] if isinstance(x, (tuple, list)) else x
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise DataError(f"the lenses read token ids of shape (batch, tokens) or (x, y) batches of them; got "
                        f"{type(ids).__name__}{tuple(ids.shape) if isinstance(ids, torch.Tensor) else ''}")
    return ids


@torch.no_grad()
def residual_stream(model: nn.Module, idx: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The residual stream after every block, ``n_layer + 1`` tensors (B, T, d) (layer 0: the embeddings), and the
    model's own logits (B, T, V), from one forward pass in eval mode."""
    _parts(model)
    sites = residual_sites(model)
    device = next(model.parameters()).device
    with eval_mode(model), capture(model, sites) as seen:
        out = model(_ids(idx).to(device))
    logits = out[0] if isinstance(out, (tuple, list)) else out
    return [seen[s][0] for s in sites], logits


class TunedLens(nn.Module):
    """One affine translator per layer but the last: ``h ↦ h + A_i h + b_i`` (zero-initialised: the logit lens).

    Args:
        n_layer: the model's blocks (translators for layers 0 .. n_layer - 1).
        width: the residual stream's width.
    """

    def __init__(self, n_layer: int, width: int, config: TunedLensConfig | None = None) -> None:
        super().__init__()
        self.n_layer, self.width = n_layer, width
        self.config = config or TunedLensConfig()
        translators = [nn.Linear(width, width) for _ in range(n_layer)]
        for t in translators:
            nn.init.zeros_(t.weight)
            nn.init.zeros_(t.bias)
        self.translators = nn.ModuleList(translators)

    @classmethod
    def for_model(cls, model: nn.Module, config: TunedLensConfig | None = None) -> TunedLens:
        """An untrained lens (equal to the logit lens) shaped for ``model``."""
        n_layer, ln_f, _ = _parts(model)
        width = next(p for p in ln_f.parameters()).shape[0]
        return cls(n_layer, int(width), config)

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """The translated stream of ``layer`` (the last layer's stream unchanged): (..., d) → (..., d)."""
        if not 0 <= layer <= self.n_layer:
            raise ModelError(f"this lens has layers 0..{self.n_layer}; got {layer}")
        return hidden if layer == self.n_layer else hidden + self.translators[layer](hidden)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the translators and the lens's shape and config to one safetensors file, atomically."""

        target = Path(path)
        check_output_path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = {"n_layer": self.n_layer, "width": self.width, "config": self.config.to_dict()}
        from nnforge.explain.sae import save_safetensors

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        return save_safetensors(target, tensors, {_METADATA_KEY: json.dumps(meta, sort_keys=True)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TunedLens:
        """Read a lens written by :meth:`save` (tensors and JSON only, no pickle)."""
        from safetensors.torch import load_file, safe_open

        source = Path(path)
        if not source.is_file():
            raise DataError(f"{source}: no such tuned-lens file")
        with safe_open(str(source), framework="pt") as f:
            raw = (f.metadata() or {}).get(_METADATA_KEY)
        if raw is None:
            raise DataError(f"{source}: not a tuned lens written by TunedLens.save")
        meta = json.loads(raw)
        config = load_config(meta["config"], where=f"{source.name} metadata")
        if not isinstance(config, TunedLensConfig):
            raise DataError(f"{source}: holds a {type(config).__name__}, not a TunedLensConfig")
        lens = cls(int(meta["n_layer"]), int(meta["width"]), config)
        tensors = load_file(str(source))
        expected = {k: tuple(v.shape) for k, v in lens.state_dict().items()}
        if {k: tuple(v.shape) for k, v in tensors.items()} != expected:
            raise IntegrityError(f"{source}: its tensors do not match a lens of {lens.n_layer} layers x {lens.width}")
        lens.load_state_dict(tensors)
        return lens


def lens_logits(model: nn.Module, stream: Sequence[torch.Tensor], lens: TunedLens | None = None) -> list[torch.Tensor]:
    """Next-token logits (B, T, V) read off every layer of ``stream``: the logit lens, or the tuned lens if given.

    The model's final norm and head are applied with their weights detached, so gradients reach only the lens.
    """
    n_layer, ln_f, head = _parts(model)
    if len(stream) != n_layer + 1:
        raise ModelError(f"the stream has {len(stream)} layers; {type(model).__name__} has {n_layer + 1}")
    if lens is not None and lens.n_layer != n_layer:
        raise ModelError(f"the tuned lens has {lens.n_layer} layers; the model has {n_layer}")
    return [_frozen(head, _frozen(ln_f, lens(h, layer) if lens is not None else h)) for layer, h in enumerate(stream)]


def _frozen(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with its parameters detached (no gradient reaches the model, whatever its flags)."""
    return torch.func.functional_call(module, {k: v.detach() for k, v in module.named_parameters()}, (x,))


def train_tuned_lens(model: nn.Module, batches: Sequence[torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
                     config: TunedLensConfig | None = None) -> TunedLens:
    """Train a :class:`TunedLens` for ``model`` on ``batches`` of token ids (or ``(x, y)`` pairs).

    Each step takes one batch (drawn at random, seeded), and minimises the sum over layers of
    KL(model's final distribution ‖ the lens's), averaged over tokens. The model is not changed.

    Raises:
        ModelError: not a model with the char-GPT's layout. DataError: no batches, or not token ids.
    """
    config = config or TunedLensConfig()
    if len(batches) == 0:
        raise DataError("train_tuned_lens needs at least one batch of token ids")
    lens = TunedLens.for_model(model, config)
    device = next(model.parameters()).device
    lens.to(device)
    optimizer = torch.optim.Adam(lens.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / config.steps)
    gen = torch.Generator().manual_seed(config.seed)
    for step in range(config.steps):
        idx = _ids(batches[int(torch.randint(len(batches), (), generator=gen))]).to(device)
        stream, final = residual_stream(model, idx)
        target = F.log_softmax(final.float(), -1)  # (B, T, V)
        loss = torch.zeros((), device=device)
        for logits in lens_logits(model, stream, lens)[:-1]:  # the last layer is the model's own output
            loss = loss + F.kl_div(F.log_softmax(logits.float(), -1), target, log_target=True, reduction="none"
                                   ).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % max(1, config.steps // 10) == 0:
            log.info("tuned lens step %d: summed KL %.4f", step, float(loss.detach()))
    lens.eval()
    return lens
