"""Flower's SecAgg+ as the alternative to homomorphic encryption: the clients mask their weighted models with
pairwise and private masks that cancel in the sum; the server learns only the sum (the masks of a client that
drops out are rebuilt from Shamir shares its neighbours hold). Nothing is encrypted for a key holder, so there is
no key holder: what it costs is four message exchanges a round instead of one, and integer quantization.

nnforge runs Flower's own protocol — ``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` on the clients —
inside its round loop: each round hands the workflow the global model (float tensors, in order) and Flower's
legacy FedAvg, and takes back the securely averaged model. Bytes are counted on every message of the four
stages, both ways. With ``audit_plaintext`` (measurement only) each client also sends its weighted model in the
clear, so the round records how far the protocol's average is from the exact one (quantization to
``secagg_quantization`` levels over ``[-secagg_clip, secagg_clip]``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from nnforge.federated._flower import require

__all__ = ["SecAggPlusRound", "SECAGG_AUDIT", "SECAGG_CONFIGS", "client_secagg_content"]

SECAGG_CONFIGS = "secaggplus_configs"
"""The config record of Flower's SecAgg+ stages (flwr.common.secure_aggregation.secaggplus_constants)."""
SECAGG_AUDIT = "nnforge-secagg-audit"
"""The reply's config record carrying a client's plaintext weighted model (measurement only)."""


def _value_bytes(v: Any) -> int:
    if isinstance(v, bytes | str):
        return len(v)
    if isinstance(v, list | tuple):
        return sum(_value_bytes(x) for x in v)
    return 8  # bool, int, float


def message_bytes(content: Any) -> int:
    """Payload bytes of a message's records: arrays and metrics as Flower counts them, config values (SecAgg+'s
    lists of keys and shares among them) by their bytes."""
    n = sum(int(r.count_bytes()) for r in [*content.array_records.values(), *content.metric_records.values()])
    for record in content.config_records.values():
        n += sum(len(k) + _value_bytes(v) for k, v in record.items())
    return n


class _CountingGrid:
    """Flower's ``Grid`` with the bytes of every message sent and received counted (and audit records kept)."""

    def __init__(self, grid: Any) -> None:
        self._grid, self._size = grid, message_bytes
        self.down = self.up = 0
        self.audits: dict[int, np.ndarray] = {}
        self.errors: dict[int, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        messages = list(messages)
        self.down += sum(self._size(m.content) for m in messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for r in replies:
            if r.has_error():
                self.errors[int(r.metadata.src_node_id)] = str(r.error.reason)
                continue
            if SECAGG_AUDIT in r.content:
                self.audits[int(r.metadata.src_node_id)] = np.frombuffer(
                    bytes(r.content[SECAGG_AUDIT]["weighted"]), dtype=np.float64).copy()
                del r.content[SECAGG_AUDIT]  # the protocol must not see it; not counted as sent
            self.up += self._size(r.content)
        return replies


class SecAggPlusRound:
    """One federated job's rounds through Flower's SecAgg+ workflow."""

    def __init__(self, config: Any, keys: list[str], sent: dict[str, Any], max_weight: float) -> None:
        app = require("flwr.app")
        server = require("flwr.server")
        legacy = require("flwr.server.strategy")
        workflow = require("flwr.server.workflow")
        compat = require("flwr.server.compat.legacy_context")
        s = config.secure
        self.keys, self.config = keys, config
        strategy = legacy.FedAvg(fraction_fit=config.fraction_train, fraction_evaluate=0.0,
                                 min_fit_clients=config.min_clients, min_available_clients=config.min_clients,
                                 on_fit_config_fn=lambda rnd: {**sent, "server-round": int(rnd)})
        shares = s.secagg_shares if s.secagg_shares <= 1 else int(s.secagg_shares)  # Flower: float = a share
        threshold = s.secagg_threshold if s.secagg_threshold <= 1 else int(s.secagg_threshold)
        self.workflow = workflow.SecAggPlusWorkflow(
            num_shares=shares, reconstruction_threshold=threshold, max_weight=max_weight,
            clipping_range=s.secagg_clip, quantization_range=s.secagg_quantization, timeout=config.round_timeout_s)
        context = app.Context(run_id=0, node_id=0, node_config={}, state=app.RecordDict(), run_config={})
        self.context = compat.LegacyContext(context, server.ServerConfig(num_rounds=config.rounds), strategy,
                                            server.SimpleClientManager())
        self._registered: set[int] = set()

    def _register(self, grid: Any) -> None:
        proxy = require("flwr.server.compat.grid_client_proxy")
        for nid in grid.get_node_ids():
            if nid not in self._registered:
                self.context.client_manager.register(proxy.GridClientProxy(node_id=nid, grid=grid,
                                                                           run_id=grid.run.run_id))
                self._registered.add(nid)

    def round(self, grid: Any, rnd: int, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Run round ``rnd`` from the global ``state``; returns the new float tensors (or None when the protocol
        halted), bytes each way, the replying nodes, errors, and the audited difference when measured."""
        common = require("flwr.common")
        recompat = require("flwr.compat.common.recorddict_compat")
        constant = require("flwr.server.workflow.constant")
        app = require("flwr.app")
        self._register(grid)
        arrays = [state[k].detach().cpu().numpy() for k in self.keys]
        ctx = self.context
        ctx.state.config_records[constant.MAIN_CONFIGS_RECORD] = app.ConfigRecord(
            {constant.Key.CURRENT_ROUND: rnd, constant.Key.START_TIME: time.time()})
        ctx.state.array_records[constant.MAIN_PARAMS_RECORD] = recompat.parameters_to_arrayrecord(
            common.ndarrays_to_parameters(arrays), True)
        counting = _CountingGrid(grid)
        before = ctx.state.array_records[constant.MAIN_PARAMS_RECORD]
        self.workflow(counting, ctx)
        after = ctx.state.array_records[constant.MAIN_PARAMS_RECORD]
        out: dict[str, Any] = {"bytes_down": counting.down, "bytes_up": counting.up, "errors": counting.errors,
                               "new": None, "audits": len(counting.audits)}
        if after is before:
            return out  # the protocol halted (too few clients in a stage): no aggregate this round
        new = common.parameters_to_ndarrays(recompat.arrayrecord_to_parameters(after, True))
        out["new"] = {k: torch.from_numpy(np.asarray(a, dtype=np.float64)).to(state[k].dtype).view_as(state[k])
                      for k, a in zip(self.keys, new, strict=True)}
        if counting.audits:
            weights = np.asarray([float(v[0]) for v in counting.audits.values()])
            exact = sum(v[1:] for v in counting.audits.values()) / weights.sum()
            got = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in new])
            out["max_abs_diff"] = float(np.abs(got - exact).max())
        return out


def client_secagg_content(job: Any, msg: Any, context: Any, train: Any) -> Any:
    """A SecAgg+ collect stage's training on the client: the legacy ``FitIns`` in, ``FitRes`` out (the mod masks
    its parameters), plus the plaintext audit record when measuring."""
    app = require("flwr.app")
    common = require("flwr.common")
    recompat = require("flwr.compat.common.recorddict_compat")
    fitins = recompat.recorddict_to_fitins(msg.content, keep_input=True)
    template = job.model(int(context.node_config["partition-id"]))
    keys = [k for k, v in template.state_dict().items() if torch.is_floating_point(v)]
    arrays = common.parameters_to_ndarrays(fitins.parameters)
    inner = app.RecordDict({"arrays": app.ArrayRecord({k: torch.from_numpy(np.array(a))
                                                       for k, a in zip(keys, arrays, strict=True)}),
                            "config": app.ConfigRecord(dict(fitins.config))})
    content = train(inner)
    state = content["arrays"].to_torch_state_dict()
    weights = [state[k].numpy() for k in keys]
    examples = int(content["metrics"]["num-examples"])
    fitres = common.FitRes(status=common.Status(code=common.Code.OK, message=""),
                           parameters=common.ndarrays_to_parameters(weights), num_examples=examples,
                           metrics=dict(content["metrics"]))
    reply = recompat.fitres_to_recorddict(fitres, keep_input=True)
    if job.he is not None and job.he.audit_plaintext:
        flat = np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights]) * examples
        reply[SECAGG_AUDIT] = app.ConfigRecord({"weighted": np.concatenate([[examples], flat]).tobytes()})
    return reply
