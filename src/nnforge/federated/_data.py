"""Which units of a dataset a partition splits, and the data a client trains on.

- :class:`~nnforge.data.ArrayClassification` (``digits``): the rows of the ``train`` split, labelled by class;
  evaluation uses the ``test`` split, on the server.
- :class:`~nnforge.data.CharCorpus` (``shakespeare-char``): spans of at most ``CHUNK`` tokens of its documents'
  ``train`` part (a play of 150,000 characters is 19 spans), labelled by their document's group (comedy,
  tragedy, …), each one's source its document (so ``source`` deals whole plays, ``iid`` deals spans). A client
  trains on its spans' tokens; evaluation uses the corpus's ``val`` part, on the server.
- :class:`~nnforge.data.TextClassification` (``shakespeare-genre``): the texts of the ``train`` split, labelled by
  class, each one's source the ``play`` (or ``source``) in its metadata; evaluation uses the ``test`` split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nnforge.data import ArrayClassification, CharCorpus, TextClassification
from nnforge.errors import DataError
from nnforge.federated.partition import Units

__all__ = ["units_of", "ClientData", "client_data", "data_kind"]


def data_kind(data: Any) -> str:
    if isinstance(data, ArrayClassification):
        if "train" not in data.splits or "test" not in data.splits:
            raise DataError(f"federated learning on {data.name!r} needs splits 'train' (split among the clients) "
                            f"and 'test' (the server's evaluation); it has {sorted(data.splits)}")
        return "arrays"
    if isinstance(data, CharCorpus):
        if not data.documents:
            raise DataError(f"federated learning on the corpus {data.name!r} splits its documents among the "
                            "clients; it has none recorded")
        return "corpus"
    if isinstance(data, TextClassification):
        if "train" not in data.splits or "test" not in data.splits:
            raise DataError(f"federated learning on {data.name!r} needs splits 'train' (split among the clients) "
                            f"and 'test' (the server's evaluation); it has {sorted(data.splits)}")
        return "text"
    raise DataError(f"federated learning takes an array dataset (e.g. digits), a character corpus (e.g. "
                    f"shakespeare-char) or a text classification dataset (e.g. shakespeare-genre); got "
                    f"{type(data).__name__}")


CHUNK = 8192
"""Tokens per unit of a character corpus (a document's last span may be shorter, never under ``MIN_SPAN``)."""
MIN_SPAN = 256


def _corpus_spans(data: CharCorpus) -> list[tuple[str, int, int]]:
    """``(document, start, end)`` of every unit: the documents' tokens in the train part, cut every ``CHUNK``."""
    n = len(data.train)
    spans = []
    for doc, (start, end) in data.documents.items():
        end = min(end, n)
        for s in range(start, end, CHUNK):
            e = min(s + CHUNK, end)
            if e - s >= MIN_SPAN or s == start:
                spans.append((doc, s, e))
            else:  # a short tail joins the span before it
                d, s0, _ = spans[-1]
                spans[-1] = (d, s0, e)
    return [x for x in spans if x[2] > x[1]]


def units_of(data: Any) -> Units:
    kind = data_kind(data)
    if kind == "arrays":
        return Units(np.asarray(data.splits["train"][1], dtype=np.int64))
    if kind == "text":
        split = data.split("train")
        sources = [m.get("play") or m.get("source") for m in split.meta] if split.meta else []
        return Units(np.asarray(split.labels, dtype=np.int64),
                     [str(x) for x in sources] if sources and all(sources) else None)
    spans = _corpus_spans(data)
    group_of = {d: g for g, members in sorted(data.groups.items()) for d in members}
    names = sorted(set(group_of.values()))
    labels = np.asarray([names.index(group_of[d]) if d in group_of else len(names) for d, _, _ in spans],
                        dtype=np.int64)
    return Units(labels, [d for d, _, _ in spans])


@dataclass(frozen=True)
class ClientData:
    """One client's training data: rows ``(x, y)`` of an array dataset, a token stream ``tokens``, or ``texts``
    with their labels ``y``."""

    kind: str
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    texts: tuple[str, ...] | None = None

    @property
    def examples(self) -> int:
        """What the client's update is weighted by: rows, or tokens."""
        return int(self.y.shape[0]) if self.y is not None else int(self.tokens.shape[0])  # type: ignore[union-attr]


def client_data(data: Any, indices: np.ndarray) -> ClientData:
    if data_kind(data) == "text":
        split = data.split("train")
        rows = [int(i) for i in indices]
        return ClientData("text", y=torch.tensor([split.labels[i] for i in rows], dtype=torch.long),
                          texts=tuple(split.texts[i] for i in rows))
    if data_kind(data) == "arrays":
        x, y = data.splits["train"]
        idx = np.asarray(indices, dtype=np.int64)
        return ClientData("arrays", x=torch.from_numpy(np.ascontiguousarray(x[idx])),
                          y=torch.from_numpy(np.ascontiguousarray(y[idx])))
    spans = _corpus_spans(data)
    small = torch.int16 if data.vocab_size < 2**15 else torch.int64  # a client's tokens, compactly (to Ray workers)
    return ClientData("corpus", tokens=torch.cat([data.train[spans[int(i)][1]:spans[int(i)][2]] for i in indices]
                                                 ).to(small))
