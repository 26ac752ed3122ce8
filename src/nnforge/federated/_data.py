"""Which units of a dataset a partition splits, and the data a client trains on.

- :class:`~nnforge.data.ArrayClassification` (``digits``): the rows of the ``train`` split, labelled by class;
  evaluation uses the ``test`` split, on the server.
- :class:`~nnforge.data.CharCorpus` (``shakespeare-char``): its documents (the plays and the poems), labelled by
  their group (comedy, tragedy, …), each one's source its own name. A client trains on its documents' tokens
  that lie in the corpus's ``train`` part; evaluation uses the corpus's ``val`` part, on the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nnforge.data import ArrayClassification, CharCorpus
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
    raise DataError(f"federated learning takes an array dataset (e.g. digits) or a character corpus (e.g. "
                    f"shakespeare-char); got {type(data).__name__}")


def _corpus_documents(data: CharCorpus) -> list[str]:
    """The documents with at least one token in the train part, in the corpus's order."""
    n = len(data.train)
    return [d for d, (start, _) in data.documents.items() if start < n]


def units_of(data: Any) -> Units:
    if data_kind(data) == "arrays":
        return Units(np.asarray(data.splits["train"][1], dtype=np.int64))
    docs = _corpus_documents(data)
    group_of = {d: g for g, members in sorted(data.groups.items()) for d in members}
    names = sorted(set(group_of.values()))
    labels = np.asarray([names.index(group_of[d]) if d in group_of else len(names) for d in docs], dtype=np.int64)
    return Units(labels, list(docs))


@dataclass(frozen=True)
class ClientData:
    """One client's training data: rows ``(x, y)`` of an array dataset, or a token stream ``tokens``."""

    kind: str
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    tokens: torch.Tensor | None = None

    @property
    def examples(self) -> int:
        """What the client's update is weighted by: rows, or tokens."""
        return int(self.y.shape[0]) if self.y is not None else int(self.tokens.shape[0])  # type: ignore[union-attr]


def client_data(data: Any, indices: np.ndarray) -> ClientData:
    if data_kind(data) == "arrays":
        x, y = data.splits["train"]
        idx = np.asarray(indices, dtype=np.int64)
        return ClientData("arrays", x=torch.from_numpy(np.ascontiguousarray(x[idx])),
                          y=torch.from_numpy(np.ascontiguousarray(y[idx])))
    docs = _corpus_documents(data)
    n = len(data.train)
    parts = []
    for i in indices:
        start, end = data.documents[docs[int(i)]]
        parts.append(data.train[start:min(end, n)])
    return ClientData("corpus", tokens=torch.cat(parts))
