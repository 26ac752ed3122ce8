"""What a federated job reports: each client's part in a round, each round, the whole job; the server's evaluation
of the global model; the error that ends a round."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nnforge.errors import NnforgeError
from nnforge.federated._config import FederatedConfig
from nnforge.federated._data import data_kind

__all__ = ["FederatedError", "ClientRound", "RoundRecord", "FederatedResult", "evaluate_global", "sampled_per_round",
           "RoundCallback"]

class FederatedError(NnforgeError):
    """A federated round could not go on (every sampled client failed, or too few replied); names why."""


@dataclass
class ClientRound:
    """One client's part in one round."""

    node: int
    partition: int | None = None
    examples: int = 0
    steps: int = 0
    loss: float | None = None
    seconds: float = 0.0
    bytes_up: int = 0
    error: str | None = None
    update_norm: float | None = None  # ||w_client - w_global|| over the parameters
    anomaly: float | None = None  # robust z-score of its distance to the coordinate-wise median update (> 3: suspect)
    cosine: float | None = None  # cosine of its update with the mean of the others'


@dataclass
class RoundRecord:
    """What one round did: the clients sampled and what each did, bytes each way, the global evaluation."""

    job: int
    round: int
    sampled: int
    replied: int
    bytes_down: int
    bytes_up: int
    seconds: float
    train_loss: float | None
    evaluation: dict[str, float] | None
    clients: list[ClientRound] = field(default_factory=list)
    privacy: dict[str, Any] | None = None  # epsilon spent after this round, delta, level, accountant
    aggregation_seconds: float = 0.0  # the server's aggregation alone (HE: sum, decrypt, decode)
    secure: dict[str, Any] | None = None  # secure aggregation: ciphertexts, and the audited difference if measured

    @property
    def failures(self) -> list[ClientRound]:
        return [c for c in self.clients if c.error is not None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FederatedResult:
    """A finished (or stopped) federated job."""

    config: dict[str, Any]
    rounds: list[RoundRecord]
    partition: list[dict[str, Any]]  # per client: units, examples, label counts
    engine: str
    seconds: float
    stopped: str | None = None  # why it ended before its last round, if it did
    failed: str | None = None  # the FederatedError that ended it (federate_ raises it; federate_many_ records it)

    @property
    def final(self) -> dict[str, float]:
        """The last evaluation of the global model."""
        for r in reversed(self.rounds):
            if r.evaluation is not None:
                return r.evaluation
        return {}

    @property
    def privacy(self) -> dict[str, Any] | None:
        """The privacy spent by the last round (epsilon, delta, level), or None without DP."""
        return self.rounds[-1].privacy if self.rounds else None

    @property
    def bytes_per_round(self) -> float:
        return float(np.mean([r.bytes_down + r.bytes_up for r in self.rounds])) if self.rounds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "engine": self.engine, "privacy": self.privacy, "seconds": self.seconds, "stopped": self.stopped,
                "failed": self.failed, "partition": self.partition, "final": self.final, "bytes_per_round": self.bytes_per_round,
                "rounds": [r.to_dict() for r in self.rounds]}


RoundCallback = Callable[[RoundRecord], None]


# --- evaluation on the server -----------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_global(model: nn.Module, data: Any, *, batches: int = 20, block_size: int = 64,
                    seed: int = 0) -> dict[str, float]:
    """The global model on the held-out data: loss and accuracy on an array or text dataset's ``test`` split, or
    loss on ``batches`` fixed batches of a corpus's ``val`` part."""
    was_training = model.training
    model.eval()
    try:
        if data_kind(data) == "arrays":
            x, y = (torch.from_numpy(np.ascontiguousarray(a)) for a in data.splits["test"])
            loss, correct = 0.0, 0
            for i in range(0, len(y), 512):
                logits = model(x[i:i + 512])
                logits = logits[0] if isinstance(logits, tuple) else logits
                loss += float(nn.functional.cross_entropy(logits, y[i:i + 512], reduction="sum"))
                correct += int((logits.argmax(-1) == y[i:i + 512]).sum())
            return {"loss": loss / len(y), "accuracy": correct / len(y)}
        if data_kind(data) == "text":
            split = data.split("test")
            order = sorted(range(len(split)), key=lambda i: len(split.texts[i]))
            labels = torch.tensor(split.labels, dtype=torch.long)
            loss, correct = 0.0, 0
            for i in range(0, len(order), 64):
                idx = order[i:i + 64]
                b = model.tokenize([split.texts[j] for j in idx])  # type: ignore[operator]
                logits = model(b["input_ids"], b["attention_mask"])
                loss += float(nn.functional.cross_entropy(logits, labels[idx], reduction="sum"))
                correct += int((logits.argmax(-1) == labels[idx]).sum())
            return {"loss": loss / len(order), "accuracy": correct / len(order)}
        g = torch.Generator().manual_seed(seed)
        losses = [float(model(*data.batch("val", 16, block_size, g))[1]) for _ in range(batches)]
        return {"loss": float(np.mean(losses))}
    finally:
        model.train(was_training)


def sampled_per_round(config: FederatedConfig) -> int:
    """How many clients Flower samples each round (its rule: the share, at least ``min_clients``)."""
    return min(config.clients, max(int(config.clients * config.fraction_train), config.min_clients))


