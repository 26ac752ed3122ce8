"""Running a federated job: the server's round loop around a Flower strategy, and Flower's engines.

The round loop asks the strategy to configure each round (which clients, what they receive), sends the messages
through Flower's ``Grid``, hands the replies to the strategy to aggregate, evaluates the global model on the
server and reports the round (clients, failures, bytes each way, losses, evaluation) to the caller's callbacks.
The strategy is Flower's object, used through its public interface; the loop is ours so that a round can be
recorded, a budget can stop the run between rounds, and a client's failure is named rather than swallowed.

Engines: ``simulation`` runs every client on this machine with Flower's simulation engine (Ray actors, as many at
once as ``client_cpus`` allows).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nnforge.errors import NnforgeError
from nnforge.federated._client import ClientJob, make_client_app
from nnforge.federated._config import FederatedConfig
from nnforge.federated._data import client_data, data_kind, units_of
from nnforge.federated._flower import require
from nnforge.federated.partition import partition_indices
from nnforge.federated.strategies import STRATEGIES, build_strategy

__all__ = ["ClientRound", "RoundRecord", "FederatedResult", "FederatedError", "federate_", "evaluate_global",
           "check_federation", "simulate"]


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


@dataclass
class RoundRecord:
    """What one round did: the clients sampled and what each did, bytes each way, the global evaluation."""

    round: int
    sampled: int
    replied: int
    bytes_down: int
    bytes_up: int
    seconds: float
    train_loss: float | None
    evaluation: dict[str, float] | None
    clients: list[ClientRound] = field(default_factory=list)

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

    @property
    def final(self) -> dict[str, float]:
        """The last evaluation of the global model."""
        for r in reversed(self.rounds):
            if r.evaluation is not None:
                return r.evaluation
        return {}

    @property
    def bytes_per_round(self) -> float:
        return float(np.mean([r.bytes_down + r.bytes_up for r in self.rounds])) if self.rounds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "engine": self.engine, "seconds": self.seconds, "stopped": self.stopped,
                "partition": self.partition, "final": self.final, "bytes_per_round": self.bytes_per_round,
                "rounds": [r.to_dict() for r in self.rounds]}


RoundCallback = Callable[[RoundRecord], None]


# --- evaluation on the server -----------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_global(model: nn.Module, data: Any, *, batches: int = 20, block_size: int = 64,
                    seed: int = 0) -> dict[str, float]:
    """The global model on the held-out data: loss and accuracy on an array dataset's ``test`` split, or loss on
    ``batches`` fixed batches of a corpus's ``val`` part."""
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
        g = torch.Generator().manual_seed(seed)
        losses = [float(model(*data.batch("val", 16, block_size, g))[1]) for _ in range(batches)]
        return {"loss": float(np.mean(losses))}
    finally:
        model.train(was_training)


# --- the round loop ---------------------------------------------------------------------------------------------

def _bytes(content: Any) -> int:
    """Payload bytes of a message's records (arrays, metrics, configs)."""
    records = [*content.array_records.values(), *content.metric_records.values(), *content.config_records.values()]
    return int(sum(r.count_bytes() for r in records))


def _error_text(reason: str) -> str:
    """A client's error, without the Ray and Flower traceback wrapped around it: the original exception's message."""
    marker = "Exception ClientAppException occurred. Message:"
    if marker in reason:
        reason = reason.rsplit(marker, 1)[1]
    lines = [x.strip() for x in reason.strip().strip("'>").splitlines() if x.strip()]
    text = lines[-1] if lines else reason.strip()
    return text[:500]


def _client_round(reply: Any) -> ClientRound:
    node = int(reply.metadata.src_node_id)
    if reply.has_error():
        return ClientRound(node=node, error=_error_text(str(reply.error.reason)) or f"error code {reply.error.code}")
    m = reply.content["metrics"] if "metrics" in reply.content else {}
    loss = m.get("train-loss")
    return ClientRound(node=node, partition=int(m["partition-id"]) if "partition-id" in m else None,
                       examples=int(m.get("num-examples", 0)), steps=int(m.get("steps", 0)),
                       loss=float(loss) if loss is not None and math.isfinite(float(loss)) else None,
                       seconds=float(m.get("seconds", 0.0)), bytes_up=_bytes(reply.content))


@dataclass
class _Loop:
    config: FederatedConfig
    model: nn.Module  # the caller's model: holds the global weights after each round
    data: Any
    callbacks: Sequence[RoundCallback]
    block_size: int
    rounds: list[RoundRecord] = field(default_factory=list)
    stopped: str | None = None

    def common(self) -> dict[str, Any]:
        c = self.config
        # a round starts once every client is connected (Flower samples among the nodes connected then)
        return {"fraction_train": c.fraction_train, "fraction_evaluate": 0.0, "min_train_nodes": c.min_clients,
                "min_available_nodes": c.clients}

    def wait_for_nodes(self, grid: Any) -> None:
        deadline = time.monotonic() + self.config.round_timeout_s
        while (have := len(list(grid.get_node_ids()))) < self.config.clients:
            if time.monotonic() > deadline:
                raise FederatedError(f"{have} of {self.config.clients} clients connected within round_timeout_s "
                                     f"({self.config.round_timeout_s:g} s)")
            time.sleep(0.2)

    def mean_buffers(self, replies: list[Any]) -> dict[str, torch.Tensor]:
        """The clients' buffers (BatchNorm statistics), averaged by their examples."""
        names = [n for n, _ in self.model.named_buffers()]
        rows = [(r.content["arrays"].to_torch_state_dict(), float(r.content["metrics"]["num-examples"]))
                for r in replies if not r.has_error() and "arrays" in r.content]
        total = sum(w for _, w in rows)
        if not names or not rows or total <= 0:
            return {}
        out = {}
        for n in names:
            if n in rows[0][0]:
                first = rows[0][0][n]
                mean = sum(s[n].double() * w for s, w in rows) / total
                out[n] = mean.to(first.dtype) if torch.is_floating_point(first) else mean.round().to(first.dtype)
        return out

    def run(self, grid: Any) -> None:
        app = require("flwr.app")
        c = self.config
        strategy = build_strategy(c.strategy, c.strategy_options, self.common())
        arrays = app.ArrayRecord({k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
        for rnd in range(1, c.rounds + 1):
            t0 = time.perf_counter()
            if rnd == 1:  # Flower sizes its sample on the nodes connected when asked: wait for all of them first
                self.wait_for_nodes(grid)
            messages = list(strategy.configure_train(rnd, arrays, app.ConfigRecord({}), grid))
            if not messages:
                raise FederatedError(f"round {rnd}: the strategy sampled no client (fraction_train "
                                     f"{c.fraction_train} of {c.clients})")
            down = sum(_bytes(m.content) for m in messages)
            replies = list(grid.send_and_receive(messages=messages, timeout=c.round_timeout_s))
            clients = [_client_round(r) for r in replies]
            missing = len(messages) - len(replies)
            clients += [ClientRound(node=-1, error="no reply before round_timeout_s") for _ in range(missing)]
            buffers = self.mean_buffers(replies) if STRATEGIES.get(c.strategy).average_buffers else {}
            new, _ = strategy.aggregate_train(rnd, replies)
            if new is not None and buffers:
                merged = new.to_torch_state_dict()
                merged.update(buffers)
                new = app.ArrayRecord(merged)
            ok = [x for x in clients if x.error is None]
            if new is None or len(ok) < c.min_clients:
                by_error: dict[str, list[int]] = {}
                for x in clients:
                    if x.error:
                        by_error.setdefault(x.error, []).append(x.node)
                reasons = "; ".join(f"{len(nodes)} client(s): {err}" for err, nodes in by_error.items()) or "none"
                raise FederatedError(f"round {rnd}: {len(ok)} of {len(messages)} sampled clients replied "
                                     f"(min_clients {c.min_clients}); their errors: {reasons}")
            arrays = new
            self.model.load_state_dict(arrays.to_torch_state_dict())
            evaluation = None
            if rnd % c.eval_every == 0 or rnd == c.rounds:
                evaluation = evaluate_global(self.model, self.data, batches=c.eval_batches,
                                             block_size=self.block_size, seed=c.seed)
            weights = [x.examples for x in ok if x.loss is not None]
            losses = [x.loss for x in ok if x.loss is not None]
            train_loss = float(np.average(losses, weights=weights)) if losses and sum(weights) else None
            record = RoundRecord(round=rnd, sampled=len(messages), replied=len(ok), bytes_down=down,
                                 bytes_up=sum(x.bytes_up for x in ok), seconds=time.perf_counter() - t0,
                                 train_loss=train_loss, evaluation=evaluation, clients=clients)
            self.rounds.append(record)
            for cb in self.callbacks:
                cb(record)


# --- engines ----------------------------------------------------------------------------------------------------

def simulate(server_main: Callable[[Any], None], job: ClientJob, clients: int, client_cpus: float = 1.0) -> None:
    """Flower's simulation engine: ``server_main(grid)`` in an in-process ServerApp thread, ``clients`` virtual
    SuperNodes running ``job``'s ClientApp on Ray actors (as many at once as CPUs allow ``client_cpus`` each)."""
    serverapp = require("flwr.serverapp")
    simulation = require("flwr.simulation")
    server_app = serverapp.ServerApp()

    @server_app.main()  # type: ignore[misc]
    def main(grid: Any, context: Any) -> None:
        server_main(grid)

    cpus = os.cpu_count() or 1
    backend = {"client_resources": {"num_cpus": min(client_cpus, cpus), "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False, "log_to_driver": False,
                             "logging_level": "error", "configure_logging": True}}
    saved = os.environ.get("PYTHONPATH")  # Flower's Ray backend rewrites it for its workers; give it back after
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # run_simulation's deprecation notice (see docs/federated.md)
            simulation.run_simulation(server_app=server_app, client_app=make_client_app(job), num_supernodes=clients,
                                      backend_config=backend)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def check_federation(data: Any, config: FederatedConfig) -> list[np.ndarray]:
    """Everything about ``data`` and ``config`` that can be checked before a federation starts: the data's kind,
    ``local.steps`` for a corpus, a partition that can be made (returned: each client's unit indices), Flower."""
    from nnforge.errors import ConfigError

    if data_kind(data) == "corpus" and config.local.steps is None:
        raise ConfigError("federated training on a character corpus needs local.steps (optimizer steps per client "
                          "per round), e.g. local: {steps: 20}")
    units = units_of(data)
    parts = partition_indices(units.labels, config.clients, config.partition, seed=config.seed,
                              sources=units.sources, **config.partition_options)
    require("flwr.simulation")
    return parts


def federate_(model: nn.Module, data: Any, config: FederatedConfig, *,
              callbacks: Sequence[RoundCallback] = (), progress: bool = False) -> FederatedResult:
    """Train ``model`` federated over ``config.clients`` clients holding parts of ``data``, in place.

    Args:
        model: any nnforge model for ``data`` (its weights are the first global model; after the call it holds
            the last one).
        data: an array dataset with ``train`` and ``test`` splits (``digits``) or a character corpus with
            documents (``shakespeare-char``; set ``config.local.steps``).
        config: clients, rounds, strategy, partition, local training.
        callbacks: ``cb(RoundRecord)`` after each round (raising stops the run with that error).
        progress: a progress bar over the rounds.

    Raises:
        ConfigError, DataError: bad options or data, before anything starts.
        FederatedError: a round got too few replies (every client's error is in the message).
        MissingDependencyError: Flower is not installed (``pip install 'nnforge[federated]'``).
    """
    parts = check_federation(data, config)
    units = units_of(data)
    per_client = [client_data(data, p) for p in parts]
    block = int(getattr(getattr(model, "config", None), "block_size", 64) or 64)
    template = copy.deepcopy(model).cpu()
    job = ClientJob(template=template, data=per_client, local=config.local, seed=config.seed, block_size=block)
    partition = [{"client": i, "units": int(len(p)), "examples": d.examples,
                  "labels": np.bincount(units.labels[p], minlength=int(units.labels.max()) + 1).tolist()}
                 for i, (p, d) in enumerate(zip(parts, per_client, strict=True))]
    hooks = list(callbacks)
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task(f"federated {config.strategy}", total=config.rounds)

        def advance(record: RoundRecord) -> None:
            assert bar is not None
            ev = record.evaluation or {}
            bar.update(task, advance=1, description=f"federated {config.strategy} round {record.round}"
                       + (f" acc {ev['accuracy']:.3f}" if "accuracy" in ev else "")
                       + (f" loss {ev['loss']:.3f}" if "loss" in ev else ""))

        hooks.append(advance)
    loop = _Loop(config, model, data, hooks, block)
    t0 = time.perf_counter()
    if bar is not None:
        bar.start()
    try:
        simulate(loop.run, job, config.clients, config.client_cpus)
    finally:
        if bar is not None:
            bar.stop()
    return FederatedResult(config=config.to_dict(), rounds=loop.rounds, partition=partition, engine="simulation",
                           seconds=time.perf_counter() - t0, stopped=loop.stopped)
