"""Seeded text perturbations (typos, casing, whitespace, dropped words) and a text classifier's robustness.

Each perturbation is registered by name in :data:`TEXT_PERTURBATIONS` and hits each unit it works on
(a character, a gap between words, a word) independently with probability ``rate``:

- ``char_swap``: a character inside a word trades places with the next one ("teh"); the pair is then skipped.
- ``char_drop``: a non-space character is deleted.
- ``case``: a letter's case is flipped.
- ``whitespace``: a gap between words is removed (words merge), doubled, or becomes a tab or a newline.
- ``word_dropout``: a word is deleted with the gap after it (at least one word is always kept).

Text ``i`` of a call is perturbed with its own generator seeded from ``(seed, kind, i)``, so results are
reproducible, do not depend on the other texts, and a prefix of a list gets the prefix of the results.

    noisy = perturb_texts(texts, "char_swap", rate=0.05, seed=0)
    report = text_robustness(predict, texts, labels, rate=0.05)   # {kind: {"accuracy", "flip_rate", ...}}
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from nnforge.errors import ConfigError, DataError
from nnforge.registry import Registry

__all__ = ["TEXT_PERTURBATIONS", "TextPerturbation", "perturb_texts", "text_robustness"]

TextPerturbation = Callable[[str, float, random.Random], str]
TEXT_PERTURBATIONS: Registry[TextPerturbation] = Registry("text perturbation")

_GAP = re.compile(r"(\s+)")


@TEXT_PERTURBATIONS.register("char_swap")
def _char_swap(text: str, rate: float, rng: random.Random) -> str:
    chars = list(text)
    i = 0
    while i < len(chars) - 1:
        if not chars[i].isspace() and not chars[i + 1].isspace() and rng.random() < rate:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
            i += 2  # a character moves at most once
        else:
            i += 1
    return "".join(chars)


@TEXT_PERTURBATIONS.register("char_drop")
def _char_drop(text: str, rate: float, rng: random.Random) -> str:
    return "".join(c for c in text if c.isspace() or rng.random() >= rate)


@TEXT_PERTURBATIONS.register("case")
def _case(text: str, rate: float, rng: random.Random) -> str:
    return "".join(c.swapcase() if c.isalpha() and rng.random() < rate else c for c in text)


@TEXT_PERTURBATIONS.register("whitespace")
def _whitespace(text: str, rate: float, rng: random.Random) -> str:
    parts = _GAP.split(text)  # words at even indices, gaps at odd ones
    for i in range(1, len(parts) - 1, 2):  # gaps between two words only: leading/trailing space is kept
        if parts[i - 1] and rng.random() < rate:
            parts[i] = rng.choice(("", parts[i] * 2, "\t", "\n"))
    return "".join(parts)


@TEXT_PERTURBATIONS.register("word_dropout")
def _word_dropout(text: str, rate: float, rng: random.Random) -> str:
    parts = _GAP.split(text)
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    drop = {i for i in words if rng.random() < rate}
    if len(drop) == len(words) and words:  # never empty a text: keep one word, chosen by the same generator
        drop.discard(rng.choice(words))
    kept = []
    for i in range(0, len(parts), 2):
        if i not in drop:
            kept.append(parts[i] + (parts[i + 1] if i + 1 < len(parts) else ""))
    out = "".join(kept)
    if words and words[-1] in drop:  # the last word went: drop the gap that preceded it, keep trailing space
        out = out.rstrip() + text[len(text.rstrip()):]
    return out


def perturb_texts(texts: Sequence[str], kind: str, rate: float, seed: int = 0) -> list[str]:
    """Apply the perturbation ``kind`` (see :data:`TEXT_PERTURBATIONS`) to every text, each unit hit with
    probability ``rate`` in [0, 1]; reproducible for a given ``seed``.

    Raises:
        ConfigError: unknown ``kind`` (the message lists the known ones) or ``rate`` outside [0, 1].
    """
    fn = TEXT_PERTURBATIONS.get(kind, where="kind")
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"The 'rate' parameter of perturb_texts must be a float in the range [0, 1]. "
                          f"Got {rate!r} instead.")
    if isinstance(texts, str):
        raise DataError("perturb_texts takes a list of texts; got one str (wrap it in a list)")
    return [fn(text, rate, random.Random(f"{seed}/{kind}/{i}")) for i, text in enumerate(texts)]


def _as_labels(values: Any, n: int, what: str) -> list[int]:
    out = values.tolist() if isinstance(values, torch.Tensor) else list(values)
    if len(out) != n:
        raise DataError(f"{what} has {len(out)} entries for {n} texts; pass one per text")
    return [int(v) for v in out]


def text_robustness(predict_fn: Callable[[list[str]], Any], texts: Sequence[str],
                    labels: Sequence[int] | torch.Tensor | None = None, *, kinds: Sequence[str] | None = None,
                    rate: float = 0.1, seed: int = 0) -> dict[str, dict[str, float | None]]:
    """A text classifier's accuracy and prediction flip rate under each perturbation.

    Args:
        predict_fn: ``predict_fn(list_of_texts) -> predicted class per text`` (list or tensor of ints).
        texts, labels: the evaluation texts and their labels (labels may be None: flip rates only).
        kinds: perturbations to run (default: all registered); rate, seed: as in :func:`perturb_texts`.

    Returns:
        ``{"clean": {...}, kind: {...}, ...}`` where each entry has ``accuracy`` (None without labels),
        ``flip_rate`` (share of texts whose prediction differs from the clean prediction),
        ``accuracy_drop`` (clean minus perturbed accuracy) and ``changed`` (share of texts the perturbation
        actually altered). Fractions in [0, 1].
    """
    texts = list(texts)
    if not texts:
        raise DataError("text_robustness needs at least one text")
    kinds = list(kinds) if kinds is not None else TEXT_PERTURBATIONS.names()
    for kind in kinds:
        TEXT_PERTURBATIONS.get(kind, where="kinds")  # fail on a typo before any prediction
    gold = _as_labels(labels, len(texts), "labels") if labels is not None else None
    clean = _as_labels(predict_fn(texts), len(texts), "predict_fn's output")

    def accuracy(pred: list[int]) -> float | None:
        return None if gold is None else sum(p == g for p, g in zip(pred, gold, strict=True)) / len(pred)

    clean_acc = accuracy(clean)
    out: dict[str, dict[str, float | None]] = {"clean": {"accuracy": clean_acc, "flip_rate": 0.0, "accuracy_drop": 0.0,
                                                "changed": 0.0}}
    for kind in kinds:
        noisy = perturb_texts(texts, kind, rate, seed)
        pred = _as_labels(predict_fn(noisy), len(texts), "predict_fn's output")
        acc = accuracy(pred)
        out[kind] = {"accuracy": acc,
                     "flip_rate": sum(p != c for p, c in zip(pred, clean, strict=True)) / len(texts),
                     "accuracy_drop": None if acc is None or clean_acc is None else clean_acc - acc,
                     "changed": sum(a != b for a, b in zip(noisy, texts, strict=True)) / len(texts)}
    return out
