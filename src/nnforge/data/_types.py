"""The shapes of data that nnforge's datasets return."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nnforge.errors import DataError

__all__ = ["TextSplit", "TextClassification", "CharCorpus", "ArrayClassification", "fingerprint"]


def fingerprint(obj: Any) -> str:
    """SHA-256 of a canonical JSON rendering of ``obj`` (texts, labels, …)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class TextSplit:
    """Texts with integer labels and optional per-example metadata (e.g. the play a passage is from)."""

    texts: list[str]
    labels: list[int]
    meta: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def sha256(self) -> str:
        return fingerprint({"texts": self.texts, "labels": self.labels})

    def take(self, n: int | None, seed: int = 0) -> TextSplit:
        """A seeded random subset of at most ``n`` examples (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        idx = sorted(np.random.default_rng(seed).permutation(len(self))[:n].tolist())
        meta = [self.meta[i] for i in idx] if self.meta else []
        return TextSplit([self.texts[i] for i in idx], [self.labels[i] for i in idx], meta)


@dataclass(frozen=True)
class TextClassification:
    """A text classification dataset with train / validation / test splits."""

    name: str
    label_names: list[str]
    splits: dict[str, TextSplit]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def split(self, name: str) -> TextSplit:
        if name not in self.splits:
            raise DataError(f"dataset {self.name!r} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]

    def summary(self) -> dict[str, Any]:
        """Sizes, class counts and hashes per split, for reports and the ledger."""
        out: dict[str, Any] = {"name": self.name, "labels": self.label_names, "source": self.source, "splits": {}}
        for key, sp in self.splits.items():
            counts = np.bincount(np.asarray(sp.labels, dtype=np.int64), minlength=self.num_classes).tolist()
            groups = sorted({m.get("group", "") for m in sp.meta} - {""})
            out["splits"][key] = {"n": len(sp), "class_counts": counts, "sha256": sp.sha256(), "groups": groups}
        return out


@dataclass(frozen=True)
class CharCorpus:
    """A character-level corpus: integer token ids for train and validation, and the vocabulary."""

    name: str
    train: torch.Tensor  # (N_train,) int64
    val: torch.Tensor  # (N_val,) int64
    vocab: str
    source: dict[str, Any] = field(default_factory=dict)
    # where each document lies in the whole stream (train then val): name -> (start, end); and named groups of
    # documents (shakespeare-char: comedy, tragedy, history, poems), for domain slices and domain fine-tuning
    documents: dict[str, tuple[int, int]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _check_groups(self, groups: Any, where: str) -> list[str]:
        if isinstance(groups, str) or not groups:
            raise DataError(f"{where}: a non-empty list of document groups of {self.name}, e.g. [tragedy]; got "
                            f"{groups!r}")
        unknown = [g for g in groups if g not in self.groups]
        if unknown:
            have = ", ".join(sorted(self.groups)) or "none (this corpus has no document groups)"
            raise DataError(f"{where}: {self.name} has no document group {unknown[0]!r}; its groups: {have}")
        return list(groups)

    def _stream(self) -> torch.Tensor:
        return torch.cat([self.train, self.val])

    def restrict(self, groups: list[str], val_fraction: float = 0.1) -> CharCorpus:
        """The documents of ``groups`` only, as a corpus with the same vocabulary (a model trained on the whole
        corpus reads it unchanged), split 90/10 by position like the whole."""
        groups = self._check_groups(groups, "restrict")
        stream = self._stream()
        names = [d for g in groups for d in self.groups[g]]
        names = sorted(set(names), key=names.index)
        parts = [stream[slice(*self.documents[d])] for d in names]
        ids = torch.cat(parts)
        offsets, start = {}, 0
        for d, part in zip(names, parts, strict=True):
            offsets[d] = (start, start + len(part))
            start += len(part)
        n = int(len(ids) * (1 - val_fraction))
        return CharCorpus(f"{self.name}[{','.join(groups)}]", ids[:n].clone(), ids[n:].clone(), self.vocab,
                          {**self.source, "restricted_to": groups}, offsets, {g: self.groups[g] for g in groups})

    def group_batches(self, group: str, n: int, batch_size: int, block_size: int,
                      generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` batches of (x, y) windows drawn from the documents of ``group`` (both splits; each document
        weighted by its length), for measuring how a model treats that domain."""
        (group,) = self._check_groups([group], "group_batches")
        stream = self._stream()
        spans = [self.documents[d] for d in self.groups[group] if self.documents[d][1] - self.documents[d][0]
                 > block_size + 1]
        if not spans:
            raise DataError(f"group {group!r} of {self.name} has no document longer than {block_size + 1} tokens")
        lengths = torch.tensor([e - s - block_size - 1 for s, e in spans], dtype=torch.float64)
        out = []
        for _ in range(n):
            doc = torch.multinomial(lengths, batch_size, replacement=True, generator=generator)
            offs = (torch.rand(batch_size, generator=generator, dtype=torch.float64) * lengths[doc]).long()
            starts = [spans[int(d)][0] + int(o) for d, o in zip(doc, offs, strict=True)]
            out.append((torch.stack([stream[i : i + block_size] for i in starts]),
                        torch.stack([stream[i + 1 : i + 1 + block_size] for i in starts])))
        return out

    def encode(self, text: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.vocab)}
        missing = sorted({c for c in text if c not in index})
        if missing:
            raise DataError(f"characters {missing!r} are not in the {self.name} vocabulary")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (x, y) windows of ``block_size`` tokens, y shifted by one: shapes (B, T)."""
        if split not in ("train", "val"):
            raise DataError(f"{self.name} has the splits 'train' and 'val'; got {split!r}")
        data = self.train if split == "train" else self.val
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a whole number >= 1; got {batch_size!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or not 1 <= block_size < len(data) - 1:
            raise DataError(f"block_size must be a whole number in [1, {len(data) - 2}] for the {split!r} split of "
                            f"{len(data)} tokens; got {block_size!r}")
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        x = torch.stack([data[i : i + block_size] for i in ix.tolist()])
        y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix.tolist()])
        return x, y


@dataclass(frozen=True)
class ArrayClassification:
    """A small dense classification dataset (features as float32 arrays)."""

    name: str
    label_names: list[str]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    input_shape: tuple[int, ...]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "labels": self.label_names, "source": self.source, "splits": {}}
        for key, (x, y) in self.splits.items():
            digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()
            out["splits"][key] = {"n": int(len(y)), "class_counts": np.bincount(y, minlength=self.num_classes).tolist(),
                                  "sha256": digest}
        return out
