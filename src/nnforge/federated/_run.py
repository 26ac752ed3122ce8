"""Running a federated job: the server's round loop around a Flower strategy, and Flower's engines.

The round loop asks the strategy to configure each round (which clients, what they receive), sends the messages
through Flower's ``Grid``, hands the replies to the strategy to aggregate, evaluates the global model on the
server and reports the round (clients, failures, bytes each way, losses, evaluation) to the caller's callbacks.
The strategy is Flower's object, used through its public interface; the loop is ours so that a round can be
recorded, a budget can stop the run between rounds, and a client's failure is named rather than swallowed.

The engines and the checks and preparation before a job starts are in :mod:`nnforge.federated._setup`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nnforge.federated._client import AUDIT_KEY, JOB_KEY, resolve_share, shared_state
from nnforge.federated._config import FederatedConfig
from nnforge.federated._flower import require
from nnforge.federated._records import (
    ClientRound,
    FederatedError,
    FederatedResult,
    RoundCallback,
    RoundRecord,
    evaluate_global,
    sampled_per_round,
)
from nnforge.federated._setup import _key_holder, _prepare, check_federation, simulate
from nnforge.federated.privacy import Mechanism, epsilon_of
from nnforge.federated.secagg import SecAggPlusRound
from nnforge.federated.secure import KeyHolder, decode_sum, public_context, sum_ciphertexts
from nnforge.federated.strategies import STRATEGIES, build_strategy

__all__ = ["ClientRound", "RoundRecord", "FederatedResult", "FederatedError", "federate_", "evaluate_global",
           "check_federation", "simulate", "federate_many_"]



# --- the round loop ---------------------------------------------------------------------------------------------

def _bytes(content: Any) -> int:
    """Payload bytes of a message's records (arrays, metrics, configs; not a measurement's audit record)."""
    records = [r for key, r in [*content.array_records.items(), *content.metric_records.items(),
                                *content.config_records.items()] if key != AUDIT_KEY]
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
    mechanisms: list[Mechanism] = field(default_factory=list)  # record level: per client; client level: one
    key_holder: KeyHolder | None = None  # secure aggregation: decrypts the sum only
    total_examples: int = 0
    index: int = 0  # which of the simulation's jobs the clients run for this loop
    rounds: list[RoundRecord] = field(default_factory=list)
    stopped: str | None = None
    failed: str | None = None
    seconds: float = 0.0

    def epsilon_after(self, rounds: int) -> float:
        p = self.config.privacy
        assert p is not None
        return max(epsilon_of(m, rounds, p.delta, p.accountant) for m in self.mechanisms)

    def common(self) -> dict[str, Any]:
        c = self.config
        # round 1 starts once every client is connected (wait_for_nodes: Flower samples among the nodes connected
        # then); later rounds go on with the nodes still there, at least min_clients (a deployed node can die)
        return {"fraction_train": c.fraction_train, "fraction_evaluate": 0.0, "min_train_nodes": c.min_clients,
                "min_available_nodes": c.min_clients}

    def score_updates(self, replies: list[Any], clients: list[ClientRound], arrays: Any) -> None:
        """Each replying client's update norm, anomaly score and agreement with the others (the report's
        per-client contribution table): computed from what was sent, knowing nothing of any attack."""
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        start = arrays.to_torch_state_dict()
        rows = [(c, r.content["arrays"].to_torch_state_dict()) for c, r in zip(clients, replies, strict=False)
                if c.error is None and "arrays" in r.content]
        if len(rows) < 2:
            return
        updates = torch.stack([torch.cat([(s[n].double() - start[n].double()).flatten() for n in names])
                               for _, s in rows])
        median = updates.median(dim=0).values
        dist = (updates - median).norm(dim=1)
        mad = (dist - dist.median()).abs().median()
        z = (dist - dist.median()) / (1.4826 * mad + 1e-12)
        total = updates.sum(0)
        for i, (c, _) in enumerate(rows):
            others = (total - updates[i]) / (len(rows) - 1)
            cos = torch.nn.functional.cosine_similarity(updates[i], others, dim=0)
            c.update_norm, c.anomaly, c.cosine = float(updates[i].norm()), float(z[i]), float(cos)

    def wait_for_nodes(self, grid: Any) -> None:
        deadline = time.monotonic() + self.config.round_timeout_s
        while (have := len(list(grid.get_node_ids()))) < self.config.clients:
            if time.monotonic() > deadline:
                raise FederatedError(f"{have} of {self.config.clients} clients connected within round_timeout_s "
                                     f"({self.config.round_timeout_s:g} s)")
            time.sleep(0.2)

    def secure_aggregate(self, replies: list[Any], clients: list[ClientRound], arrays: Any
                         ) -> tuple[Any, dict[str, Any]]:
        """Sum the encrypted weighted updates (the aggregator holds only the public context), have the key holder
        decrypt the sum, and step the global model by it (divided by the replying clients' share of examples)."""
        app = require("flwr.app")
        c = self.config
        assert c.secure is not None and self.key_holder is not None
        rows = [(x, r) for x, r in zip(clients, replies, strict=False) if x.error is None and "he" in r.content]
        if not rows:
            return None, {}
        aggregator = public_context(self.key_holder.public_context)
        summed = sum_ciphertexts(aggregator, [list(r.content["he"]["ct"]) for _, r in rows])
        start = arrays.to_torch_state_dict()
        keys = [k for k, v in start.items() if torch.is_floating_point(v)]
        n = sum(start[k].numel() for k in keys)
        share = sum(x.examples for x, _ in rows) / self.total_examples
        total = decode_sum(self.key_holder.decrypt(summed), n, len(rows), c.secure, c.clients)
        update = torch.from_numpy(total / share)
        new, offset = dict(start), 0
        for k in keys:
            size = start[k].numel()
            new[k] = (start[k].double() + update[offset:offset + size].view_as(start[k])).to(start[k].dtype)
            offset += size
        info: dict[str, Any] = {"ciphertexts": len(summed), "summed": len(rows)}
        audits = [r.content[AUDIT_KEY]["update"].numpy() for _, r in rows if AUDIT_KEY in r.content]
        if len(audits) == len(rows):
            info["max_abs_diff"] = float(np.abs(total - np.sum(audits, axis=0)).max())
        return app.ArrayRecord(new), info

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
        """Every round, one after another (until one fails or the budget stops it)."""
        self.start()
        for rnd in range(1, self.config.rounds + 1):
            if not self.step(grid, rnd):
                break

    def start(self) -> None:
        """The strategy (wrapped for client-level DP) and the first global model."""
        app = require("flwr.app")
        c = self.config
        strategy = build_strategy(c.strategy, c.strategy_options, self.common())
        if c.privacy is not None and c.privacy.level == "client":
            dp = require("flwr.serverapp.strategy").DifferentialPrivacyServerSideFixedClipping
            strategy = dp(strategy, noise_multiplier=self.mechanisms[0].noise_multiplier,
                          clipping_norm=c.privacy.max_grad_norm, num_sampled_clients=sampled_per_round(c))
        self._strategy = strategy
        self._share = resolve_share(self.model, c.share)
        self._secagg: SecAggPlusRound | None = None
        if c.secure is not None and c.secure.method == "secagg+":
            keys = [k for k, v in self.model.state_dict().items() if torch.is_floating_point(v)]
            self._secagg = SecAggPlusRound(c, keys, {JOB_KEY: self.index}, max_weight=float(self.total_examples))
        self._arrays = app.ArrayRecord({k: v.detach().cpu().clone()
                                        for k, v in shared_state(self.model, self._share).items()})

    def step(self, grid: Any, rnd: int) -> bool:
        """Round ``rnd``; False when the run stopped before it (its privacy budget, or a round that failed: too
        few replies, recorded in ``failed`` so that the other jobs of the engine go on)."""
        if self.stopped is not None:
            return False
        began = time.perf_counter()
        try:
            return self._round(grid, rnd)
        except FederatedError as exc:
            self.failed = self.stopped = str(exc)
            return False
        finally:
            self.seconds += time.perf_counter() - began

    def _round(self, grid: Any, rnd: int) -> bool:
        app = require("flwr.app")
        c = self.config
        strategy, arrays = self._strategy, self._arrays
        t0 = time.perf_counter()
        if c.privacy is not None and (eps := self.epsilon_after(rnd)) > c.privacy.epsilon * (1 + 1e-6):
            self.stopped = (f"privacy budget: round {rnd} would spend epsilon {eps:.4g} > {c.privacy.epsilon:g} "
                            f"(delta {c.privacy.delta:g}); stopped after round {rnd - 1}")
            return False
        if rnd == 1:  # Flower sizes its sample on the nodes connected when asked: wait for all of them first
            self.wait_for_nodes(grid)
        if self._secagg is not None:
            return self._secagg_round(grid, rnd, t0)
        sent = {JOB_KEY: self.index, **({"he-total": self.total_examples} if c.secure is not None else {})}
        messages = list(strategy.configure_train(rnd, arrays, app.ConfigRecord(sent), grid))
        if not messages:
            raise FederatedError(f"round {rnd}: the strategy sampled no client (fraction_train "
                                 f"{c.fraction_train} of {c.clients})")
        down = sum(_bytes(m.content) for m in messages)
        replies = list(grid.send_and_receive(messages=messages, timeout=c.round_timeout_s))
        clients = [_client_round(r) for r in replies]
        self.score_updates(replies, clients, arrays)
        missing = len(messages) - len(replies)
        clients += [ClientRound(node=-1, error="no reply before round_timeout_s") for _ in range(missing)]
        t_agg = time.perf_counter()
        secure: dict[str, Any] | None = None
        if c.secure is not None:
            new, secure = self.secure_aggregate(replies, clients, arrays)
        else:
            buffers = self.mean_buffers(replies) if STRATEGIES.get(c.strategy).average_buffers else {}
            new, _ = strategy.aggregate_train(rnd, replies)
            if new is not None and buffers:
                merged = new.to_torch_state_dict()
                merged.update(buffers)
                new = app.ArrayRecord(merged)
        agg_seconds = time.perf_counter() - t_agg
        ok = [x for x in clients if x.error is None]
        if new is None or len(ok) < c.min_clients:
            by_error: dict[str, list[int]] = {}
            for x in clients:
                if x.error:
                    by_error.setdefault(x.error, []).append(x.node)
            reasons = "; ".join(f"{len(nodes)} client(s): {err}" for err, nodes in by_error.items()) or "none"
            raise FederatedError(f"round {rnd}: {len(ok)} of {len(messages)} sampled clients replied "
                                 f"(min_clients {c.min_clients}); their errors: {reasons}")
        self._finish(rnd, t0, new, clients, sampled=len(messages), down=down, up=sum(x.bytes_up for x in ok),
                     agg_seconds=agg_seconds, secure=secure)
        return True

    def _secagg_round(self, grid: Any, rnd: int, t0: float) -> bool:
        """A round through Flower's SecAgg+ workflow (its four stages), in place of one exchange."""
        app = require("flwr.app")
        assert self._secagg is not None
        state = self.model.state_dict()
        t_agg = time.perf_counter()
        out = self._secagg.round(grid, rnd, state)
        agg_seconds = time.perf_counter() - t_agg  # the whole protocol: training happens inside its third stage
        errors = out["errors"]
        sampled = len(list(grid.get_node_ids()))
        clients = [ClientRound(node=int(n), error=_error_text(e)) for n, e in errors.items()]
        clients += [ClientRound(node=-1) for _ in range(max(0, sampled - len(errors)))]
        if out["new"] is None or sampled - len(errors) < self.config.min_clients:
            raise FederatedError(f"round {rnd}: SecAgg+ halted with {sampled - len(errors)} of {sampled} clients "
                                 f"(min_clients {self.config.min_clients}); errors: "
                                 + ("; ".join(sorted({_error_text(e) for e in errors.values()})) or "none"))
        new = {**state, **out["new"]}
        secure = {"method": "secagg+", "summed": sampled - len(errors),
                  **({"max_abs_diff": out["max_abs_diff"]} if "max_abs_diff" in out else {})}
        self._finish(rnd, t0, app.ArrayRecord({k: v.detach().clone() for k, v in new.items()}), clients,
                     sampled=sampled, down=out["bytes_down"], up=out["bytes_up"], agg_seconds=agg_seconds,
                     secure=secure)
        return True

    def _finish(self, rnd: int, t0: float, arrays: Any, clients: list[ClientRound], *, sampled: int, down: int,
                up: int, agg_seconds: float, secure: dict[str, Any] | None) -> None:
        """Install the round's global model, evaluate it, record the round and tell the callbacks."""
        c = self.config
        ok = [x for x in clients if x.error is None]
        self.model.load_state_dict(arrays.to_torch_state_dict(), strict=self._share == "all")
        seconds = time.perf_counter() - t0  # the round without the server's evaluation
        evaluation = None
        if rnd % c.eval_every == 0 or rnd == c.rounds:
            evaluation = evaluate_global(self.model, self.data, batches=c.eval_batches,
                                         block_size=self.block_size, seed=c.seed)
        weights = [x.examples for x in ok if x.loss is not None]
        losses = [x.loss for x in ok if x.loss is not None]
        train_loss = float(np.average(losses, weights=weights)) if losses and sum(weights) else None
        record = RoundRecord(job=self.index, round=rnd, sampled=sampled, replied=len(ok), bytes_down=down,
                             bytes_up=up, seconds=seconds, train_loss=train_loss,
                             evaluation=evaluation, clients=clients, aggregation_seconds=agg_seconds,
                             secure=secure)
        if c.privacy is not None:
            record.privacy = {"epsilon": self.epsilon_after(rnd), "delta": c.privacy.delta,
                              "level": c.privacy.level, "accountant": c.privacy.accountant,
                              "noise_multiplier": [m.noise_multiplier for m in self.mechanisms]}
        self.rounds.append(record)
        self._arrays = arrays
        for cb in self.callbacks:
            cb(record)


def federate_many_(runs: Sequence[tuple[nn.Module, FederatedConfig]], data: Any, *,
                   callbacks: Sequence[RoundCallback] = (), progress: bool = False,
                   interleave: bool = False) -> list[FederatedResult]:
    """Several federated jobs on ``data`` in one start of Flower's simulation engine (its workers start once:
    comparing strategies, privacy levels or attacks costs their rounds, not N engine starts). One after the
    other, or with ``interleave`` round by round (round 1 of every job, then round 2, …), so that a drifting
    machine slows every job alike when their times are compared. A job whose round fails (too few replies: its
    clients diverged, say, under a poisoning attack) stops there with ``failed`` set; the others go on.

    Every job must have the same number of clients (they are the same simulated nodes). Each model is trained
    in place as by :func:`federate_`; a record's ``job`` says which run it belongs to.
    """
    from nnforge.errors import ConfigError

    if not runs:
        raise ConfigError("federate_many_: no runs given")
    if any(c.deployment is not None for _, c in runs):
        raise ConfigError("federate_many_ runs on the simulation engine; submit a deployed job with federate_")
    clients = {c.clients for _, c in runs}
    if len(clients) != 1:
        raise ConfigError(f"federate_many_: every run needs the same number of clients; got {sorted(clients)}")
    prepared = [_prepare(m, data, c) for m, c in runs]
    jobs = [job for job, _, _ in prepared]
    bar = None
    hooks = list(callbacks)
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task("federated", total=sum(c.rounds for _, c in runs))

        def advance(record: RoundRecord) -> None:
            assert bar is not None
            ev = record.evaluation or {}
            name = runs[record.job][1].strategy
            bar.update(task, advance=1, description=f"federated {name} round {record.round}"
                       + (f" acc {ev['accuracy']:.3f}" if "accuracy" in ev else "")
                       + (f" loss {ev['loss']:.3f}" if "loss" in ev else ""))

        hooks.append(advance)
    block = jobs[0].block_size
    loops = [_Loop(c, m, data, hooks, block, mech, key_holder=_key_holder(job, c),
                   total_examples=sum(d.examples for d in job.data), index=i)
             for i, ((m, c), (job, mech, _)) in enumerate(zip(runs, prepared, strict=True))]

    def server(grid: Any) -> None:
        if not interleave:
            for loop in loops:
                loop.run(grid)
            return
        for loop in loops:
            loop.start()
        for rnd in range(1, max(c.rounds for _, c in runs) + 1):
            for loop in loops:
                if rnd <= loop.config.rounds:
                    loop.step(grid, rnd)

    if bar is not None:
        bar.start()
    try:
        simulate(server, jobs, runs[0][1].clients, runs[0][1].client_cpus)
    finally:
        if bar is not None:
            bar.stop()
    return [FederatedResult(config=c.to_dict(), rounds=loop.rounds, partition=part, engine="simulation",
                            seconds=loop.seconds, stopped=loop.stopped, failed=loop.failed)
            for (_, c), loop, (_, _, part) in zip(runs, loops, prepared, strict=True)]


def federate_(model: nn.Module, data: Any, config: FederatedConfig, *,
              callbacks: Sequence[RoundCallback] = (), progress: bool = False,
              spec: Any = None) -> FederatedResult:
    """Train ``model`` federated over ``config.clients`` clients holding parts of ``data``, in place.

    Args:
        model: any nnforge model for ``data`` (its weights are the first global model; after the call it holds
            the last one).
        data: an array dataset with ``train`` and ``test`` splits (``digits``) or a character corpus with
            documents (``shakespeare-char``; set ``config.local.steps``).
        config: clients, rounds, strategy, partition, local training, privacy.
        callbacks: ``cb(RoundRecord)`` after each round (raising stops the run with that error).
        progress: a progress bar over the rounds.
        spec: with ``config.deployment`` (Flower's deployment engine: a SuperLink and its SuperNodes), the
            :class:`~nnforge.federated.deployment.JobSpec` each process rebuilds ``model`` and ``data`` from.

    Raises:
        ConfigError, DataError: bad options or data, before anything starts.
        FederatedError: a round got too few replies (every client's error is in the message).
        MissingDependencyError: Flower is not installed (``pip install 'nnforge[federated]'``).
    """
    if config.deployment is not None:
        from nnforge.errors import ConfigError
        from nnforge.federated.deployment import submit

        if spec is None:
            raise ConfigError("federate_ on a deployment needs spec= (a JobSpec: the architecture and dataset the "
                              "SuperNodes rebuild)")
        check_federation(data, config, model)
        result = submit(model, spec, config, callbacks=callbacks)
    else:
        result = federate_many_([(model, config)], data, callbacks=callbacks, progress=progress)[0]
    if result.failed is not None:
        raise FederatedError(result.failed)
    return result
