"""What is explained, per model family: the function whose output is attributed, the inputs and their
baseline, the embedding layer token ids pass through, and a name for every unit (token, character, pixel).

- text classifier: token ids through the word-embedding layer; the baseline keeps [CLS]/[SEP] and replaces
  every other token by [PAD] (the usual reference for BERT-style encoders); a unit is a word piece;
- char-LM: character ids through the token embedding; the score is the next-character logit at the last
  position; the baseline is the space character (or id 0); a unit is a character;
- image / tensor classifier: the float input itself, baseline all zeros (a blank 8 × 8 digit); a unit is a
  pixel (images keep their height × width for heatmaps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nnforge.errors import DataError, ModelError
from nnforge.models import family_of

__all__ = ["Subject", "subject_of"]


@dataclass
class Subject:
    """One batch of inputs prepared for attribution (see the module docstring)."""

    family: str
    forward: Callable[..., torch.Tensor]  # (inputs, *extra) -> (B, C) scores
    inputs: torch.Tensor  # ids (B, T) or float (B, ...)
    baselines: torch.Tensor  # same shape and dtype as inputs
    extra: tuple[Any, ...]  # additional forward arguments (the attention mask)
    embedding: nn.Module | None  # the layer ids pass through (None: the inputs are attributed directly)
    units: list[list[str]]  # per example, one name per unit
    real: torch.Tensor  # (B, U) bool: the units that are input (not padding or special tokens)
    image_shape: tuple[int, int] | None = None
    texts: list[str] | None = None
    model: nn.Module | None = None
    label_names: list[str] | None = None
    layers: dict[str, nn.Module] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def one(self, i: int) -> Subject:
        """The subject of example ``i`` alone (attribution runs one example at a time to bound memory)."""
        return Subject(self.family, self.forward, self.inputs[i : i + 1], self.baselines[i : i + 1],
                       tuple(e[i : i + 1] for e in self.extra), self.embedding, [self.units[i]], self.real[i : i + 1],
                       self.image_shape, [self.texts[i]] if self.texts is not None else None, self.model,
                       self.label_names, self.layers)


def _text_subject(model: Any, inputs: Any, label_names: list[str] | None) -> Subject:
    if isinstance(inputs, str) or not isinstance(inputs, Sequence) or not inputs or \
            not all(isinstance(t, str) and t.strip() for t in inputs):
        raise DataError("a text classifier is explained on a non-empty list of non-blank strings")
    batch = model.tokenize(list(inputs))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    tok = model.tokenizer
    special = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long, device=ids.device)
    is_special = torch.isin(ids, special)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    baselines = torch.where(is_special, ids, torch.full_like(ids, pad))
    units = [tok.convert_ids_to_tokens(row.tolist()) for row in ids]
    emb = getattr(getattr(model, "encoder", None), "embeddings", None)
    word = getattr(emb, "word_embeddings", None)
    if word is None:
        raise ModelError(f"{type(model.encoder).__name__}: no embeddings.word_embeddings layer to attribute through")

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(ids, mask)  # type: ignore[no-any-return]

    blocks = getattr(getattr(model.encoder, "encoder", None), "layer", None) or []
    layers = {f"encoder.encoder.layer.{k}": layer for k, layer in enumerate(blocks)}
    return Subject("text-classifier", forward, ids, baselines, (mask,), word, units,
                   (mask.bool() & ~is_special), None, list(inputs), model, label_names, layers)


def _char_subject(model: Any, inputs: Any, vocab: str | None) -> Subject:
    ids = torch.as_tensor(inputs)
    if ids.ndim == 1:
        ids = ids.unsqueeze(0)
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.is_floating_point():
        raise DataError(f"a char-LM is explained on character ids (N, T); got shape {tuple(ids.shape)} "
                        f"of {ids.dtype}")
    block = int(model.config.block_size)
    if ids.shape[1] > block:
        raise DataError(f"a char-LM with block_size {block} is explained on at most {block} characters; "
                        f"got {ids.shape[1]}")
    size = int(model.config.vocab_size)
    if int(ids.min()) < 0 or int(ids.max()) >= size:
        raise DataError(f"character ids must be in 0..{size - 1}")
    space = vocab.index(" ") if vocab and " " in vocab else 0
    chars = [[vocab[i] if vocab and i < len(vocab) else str(i) for i in row.tolist()] for row in ids]

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return model(ids)[0][:, -1, :]  # (B, V): the next character after the last

    layers = {f"transformer.h.{k}": b for k, b in enumerate(model.transformer["h"])}
    names = list(vocab) if vocab else None
    return Subject("char-lm", forward, ids.long(), torch.full_like(ids.long(), space), (), model.transformer["wte"],
                   chars, torch.ones_like(ids, dtype=torch.bool), None, None, model, names, layers)


def _tensor_subject(model: nn.Module, inputs: Any, family: str, label_names: list[str] | None,
                    image_shape: tuple[int, int] | None) -> Subject:
    x = torch.as_tensor(inputs)
    if not x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"a {family} is explained on a float tensor (N, ...) of inputs; got shape "
                        f"{tuple(x.shape)} of {x.dtype}")
    if not torch.isfinite(x).all():
        raise DataError("the inputs hold NaN or infinite values")
    x = x.float()
    flat = int(x[0].numel())
    if image_shape is None and family == "image-classifier":
        side = round(flat ** 0.5)
        image_shape = (side, side) if side * side == flat else None
    if image_shape is None and x.ndim == 4 and x.shape[1] == 1:
        image_shape = (int(x.shape[2]), int(x.shape[3]))
    if image_shape is not None and image_shape[0] * image_shape[1] != flat:
        raise DataError(f"image_shape {image_shape} does not hold the {flat} values of one input")
    if image_shape is not None:
        h, w = image_shape
        units = [[f"pixel ({r}, {c})" for r in range(h) for c in range(w)] for _ in range(len(x))]
        x = x.reshape(len(x), 1, h, w)
    else:
        units = [[f"feature {j}" for j in range(flat)] for _ in range(len(x))]
    shape = tuple(torch.as_tensor(inputs).shape[1:])

    def forward(z: torch.Tensor) -> torch.Tensor:
        return model(z.reshape(z.shape[0], *shape))  # type: ignore[no-any-return]

    layers: dict[str, nn.Module] = {name: m for name, m in model.named_modules()
                                    if name and isinstance(m, nn.Conv2d | nn.Linear)}
    return Subject(family, forward, x, torch.zeros_like(x), (), None, units,
                   torch.ones(len(x), flat, dtype=torch.bool), image_shape, None, model, label_names, layers)


def subject_of(model: nn.Module, inputs: Any, *, label_names: list[str] | None = None, vocab: str | None = None,
               image_shape: tuple[int, int] | None = None) -> Subject:
    """Prepare ``inputs`` of ``model``'s family for attribution (see the module docstring)."""
    family = family_of(model)
    if family == "text-classifier":
        return _text_subject(model, inputs, label_names)
    if family == "char-lm":
        return _char_subject(model, inputs, vocab)
    return _tensor_subject(model, inputs, family, label_names, image_shape)
