"""The client side: a round of local training with nnforge's loop, and the Flower ``ClientApp`` around it.

A client receives the global model (and, per strategy, FedProx's μ or SCAFFOLD's control variate), trains it on
its own part of the data with :func:`nnforge.train.fit`, and replies with its model and what it did (examples,
steps, mean loss, seconds). Corrections to the gradient (FedProx's proximal term, SCAFFOLD's ``c - c_i``) are
optimizer step pre-hooks: they act after the loop's backward pass (and clipping), before each step.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nnforge.federated._config import LocalTraining
from nnforge.federated._data import ClientData
from nnforge.federated.privacy import Mechanism

__all__ = ["ClientJob", "local_train", "make_client_app", "train_reply", "train_content", "JOB_KEY", "AUDIT_KEY"]

AUDIT_KEY = "audit"
"""The reply record carrying a plaintext update for measuring secure aggregation (never counted as sent bytes)."""
JOB_KEY = "nnforge-job"
"""The train message's config entry naming which of the simulation's jobs a round belongs to."""

Hook = Callable[[torch.optim.Optimizer, Any, Any], None]


@dataclass
class ClientJob:
    """Everything a simulated client needs, shipped once to each of Flower's client workers. What a strategy asks
    of its clients beyond plain training (FedProx's proximal term, SCAFFOLD's correction) comes in its messages."""

    template: nn.Module
    data: list[ClientData]
    local: LocalTraining
    seed: int = 0
    block_size: int = 64
    dp: list[Mechanism] | None = None  # record-level DP: each partition's DP-SGD mechanism
    dp_max_grad_norm: float = 1.0
    share: str = "all"  # what travels: "all" (the state) or "trainable" (the trainable parameters)
    attack: Any = None  # an AttackConfig: simulated poisoning or failing clients
    he: Any = None  # a SecureAggregationConfig: encrypt the update with he_public instead of sending it
    he_public: bytes | None = None
    he_clients: int = 1
    _he_context: Any = field(default=None, repr=False)

    def he_context(self) -> Any:
        if self._he_context is None:
            from nnforge.federated.secure import public_context

            assert self.he_public is not None
            self._he_context = public_context(self.he_public)
        return self._he_context

    def __getstate__(self) -> dict[str, Any]:  # a TenSEAL context does not pickle: each worker rebuilds it
        return {**self.__dict__, "_he_context": None}
    _models: dict[int, nn.Module] = field(default_factory=dict, repr=False)

    def model(self, partition: int) -> nn.Module:
        """This worker's copy of the model (made once, loaded with the global weights each round)."""
        if partition not in self._models:
            self._models[partition] = copy.deepcopy(self.template)
        return self._models[partition]


def shared_state(model: nn.Module, share: str) -> dict[str, torch.Tensor]:
    """What travels each round: every entry of the state (``all``: weights and buffers such as BatchNorm's
    statistics) or the trainable parameters alone (``trainable``: a frozen base with adapters sends the adapters)."""
    if share == "trainable":
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    return dict(model.state_dict())


def resolve_share(model: nn.Module, share: str) -> str:
    """``auto``: the trainable parameters when some parameters are frozen (LoRA on a frozen base), else all."""
    if share != "auto":
        return share
    return "trainable" if any(not p.requires_grad for p in model.parameters()) else "all"


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def proximal_hook(model: nn.Module, mu: float) -> Hook:
    """FedProx: add ``mu · (w - w_global)``, the gradient of ``(mu/2)·||w - w_global||²``, before each step."""
    pairs = [(p, p.detach().clone()) for p in _trainable(model).values()]

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for p, anchor in pairs:
            if p.grad is not None:
                p.grad.add_(p.detach() - anchor, alpha=mu)

    return hook


def correction_hook(model: nn.Module, correction: dict[str, torch.Tensor]) -> Hook:
    """SCAFFOLD: add ``c - c_i`` to each gradient before each step."""
    pairs = [(p, correction[n]) for n, p in _trainable(model).items() if n in correction]

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for p, c in pairs:
            if p.grad is not None:
                p.grad.add_(c)

    return hook


def dp_local_train(model: nn.Module, data: ClientData, local: LocalTraining, mechanism: Mechanism,
                   max_grad_norm: float, *, seed: int, hooks: tuple[Hook, ...] = ()) -> dict[str, float]:
    """One round of DP-SGD through Opacus: Poisson-sampled batches of expected size ``q · n``, per-sample
    gradients clipped to ``max_grad_norm``, Gaussian noise ``σ · max_grad_norm``; ``mechanism.steps_per_round``
    steps with nnforge's loop (the accountant on the server counts exactly these)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from nnforge.optim import build_optimizer
    from nnforge.train import TrainConfig, fit

    if data.kind != "arrays":
        raise NotImplementedError("record-level DP is built for array datasets (rows); a corpus's windows are not rows")
    assert data.x is not None and data.y is not None
    torch.manual_seed(seed)
    optimizer = build_optimizer(local.optimizer, model, **local.optimizer_options)
    batch = max(1, round(mechanism.sample_rate * data.examples))
    loader = DataLoader(TensorDataset(data.x, data.y), batch_size=batch,
                        generator=torch.Generator().manual_seed(seed))
    engine = PrivacyEngine(accountant="rdp")
    private, dp_optimizer, dp_loader = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                           noise_multiplier=mechanism.noise_multiplier,
                                                           max_grad_norm=max_grad_norm, poisson_sampling=True)
    for hook in hooks:
        optimizer.register_step_pre_hook(hook)  # the wrapped optimizer: after clipping and noise

    def batches() -> Any:
        while True:
            yield from dp_loader

    def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
        if b[0].shape[0] == 0:  # Poisson sampling can draw no row: the step still adds noise (a zero gradient)
            return sum((p * 0).sum() for p in m.parameters() if p.requires_grad)  # type: ignore[return-value]
        return nn.functional.cross_entropy(m(b[0]), b[1])

    config = TrainConfig(max_steps=mechanism.steps_per_round, clip_norm=None, schedule="constant", device="cpu",
                         seed=seed, log_every=max(1, mechanism.steps_per_round))
    try:
        result = fit(private, batches(), config=config, optimizer=dp_optimizer, loss_fn=loss_fn)
    finally:
        private._close()  # type: ignore[operator]  # remove Opacus's hooks from the model
    losses = [x for x in result.losses if math.isfinite(x)]
    return {"steps": float(result.steps), "loss": sum(losses) / len(losses) if losses else float("nan"),
            "seconds": result.seconds}


def local_train(model: nn.Module, data: ClientData, local: LocalTraining, *, seed: int, block_size: int = 64,
                hooks: tuple[Hook, ...] = ()) -> dict[str, float]:
    """Train ``model`` in place on one client's data for one round; returns steps, mean loss and seconds."""
    from nnforge.optim import build_optimizer
    from nnforge.train import TensorBatches, TrainConfig, fit

    if data.kind == "arrays":
        assert data.x is not None and data.y is not None
        n = data.examples
        steps = local.steps or max(1, math.ceil(local.epochs * n / local.batch_size))
        batches: Any = TensorBatches(data.x, data.y, batch_size=min(local.batch_size, n), seed=seed)
        loss_fn: Any = None
    elif data.kind == "text":
        assert data.texts is not None and data.y is not None
        texts, labels, n = data.texts, data.y, data.examples
        steps = local.steps or max(1, math.ceil(local.epochs * n / local.batch_size))
        per_epoch = max(1, math.ceil(n / local.batch_size))
        tokenize: Any = model.tokenize

        def batches(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + step // per_epoch))
            ix = perm[(step % per_epoch) * local.batch_size:][:local.batch_size].tolist()
            b = tokenize([texts[i] for i in ix])
            return b["input_ids"], b["attention_mask"], labels[ix]

        def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
            return nn.functional.cross_entropy(m(batch[0], batch[1]), batch[2])
    else:
        assert data.tokens is not None and local.steps is not None
        tokens, steps = data.tokens, local.steps
        block = min(local.block_size or block_size, len(tokens) - 2)

        def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            ix = torch.randint(len(tokens) - block - 1, (local.batch_size,), generator=g).tolist()
            x = torch.stack([tokens[i:i + block] for i in ix]).long()
            y = torch.stack([tokens[i + 1:i + 1 + block] for i in ix]).long()
            return x, y

        def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
            return m(batch[0], batch[1])[1]

    optimizer = build_optimizer(local.optimizer, model, **local.optimizer_options)
    for hook in hooks:
        optimizer.register_step_pre_hook(hook)
    config = TrainConfig(max_steps=steps, clip_norm=local.clip_norm, schedule="constant", device="cpu", seed=seed,
                         log_every=max(1, steps))
    result = fit(model, batches, config=config, optimizer=optimizer, loss_fn=loss_fn)
    losses = [x for x in result.losses if math.isfinite(x)]
    return {"steps": float(result.steps), "loss": sum(losses) / len(losses) if losses else float("nan"),
            "seconds": result.seconds}


def train_reply(job: ClientJob, msg: Any, context: Any) -> Any:
    """Handle one ``train`` message: the Flower ``ClientApp``'s work, outside Flower's decorator for testing."""
    from nnforge.federated._flower import require

    return require("flwr.app").Message(content=train_content(job, msg.content, context), reply_to=msg)


def train_content(job: ClientJob, received: Any, context: Any) -> Any:
    """One round of this client's training from what the server sent (global arrays, config, a strategy's
    extras); the reply's records."""
    from nnforge.federated._flower import require
    from nnforge.federated.strategies.scaffold import CONTROL_KEY, DELTA_KEY, STATE_KEY

    app = require("flwr.app")
    partition = int(context.node_config["partition-id"])
    data = job.data[partition]
    model = job.model(partition) if job.dp is None else copy.deepcopy(job.template)  # Opacus hooks a fresh copy
    model.load_state_dict(received["arrays"].to_torch_state_dict(), strict=job.share == "all")
    config = received["config"]
    server_round = int(config.get("server-round", 0))
    seed = job.seed * 1_000_003 + server_round * 10_007 + partition
    hooks: list[Hook] = []
    # what the strategy asks beyond plain local training, read from what it sent: FedProx's mu, SCAFFOLD's c
    scaffold = CONTROL_KEY in received
    if float(config.get("proximal-mu", 0.0)) > 0:
        hooks.append(proximal_hook(model, float(config["proximal-mu"])))
    start = {n: p.detach().clone() for n, p in _trainable(model).items()}
    if scaffold:
        c = received[CONTROL_KEY].to_torch_state_dict() if CONTROL_KEY in received else {}
        ci = context.state[STATE_KEY].to_torch_state_dict() if STATE_KEY in context.state else {}
        c = {n: c.get(n, torch.zeros_like(w)) for n, w in start.items()}
        ci = {n: ci.get(n, torch.zeros_like(w)) for n, w in start.items()}
        hooks.append(correction_hook(model, {n: c[n] - ci[n] for n in start}))
    attack = job.attack
    if attack is not None and partition in attack.dropped and (not attack.drop_rounds
                                                               or server_round in attack.drop_rounds):
        raise ConnectionError(f"client {partition} dropped out of round {server_round} (simulated)")
    t0 = time.perf_counter()
    if job.dp is not None:
        stats = dp_local_train(model, data, job.local, job.dp[partition], job.dp_max_grad_norm, seed=seed,
                               hooks=tuple(hooks))
    else:
        stats = local_train(model, data, job.local, seed=seed, block_size=job.block_size, hooks=tuple(hooks))
    if attack is not None and partition in attack.poisoned:  # global + scale x update, every float array
        global_state = received["arrays"].to_torch_state_dict()
        with torch.no_grad():
            for name, value in model.state_dict().items():
                if torch.is_floating_point(value):
                    value.copy_(global_state[name] + attack.scale * (value - global_state[name]))
    metrics = {"num-examples": data.examples, "train-loss": stats["loss"], "steps": int(stats["steps"]),
               "seconds": time.perf_counter() - t0, "partition-id": partition}
    if job.he is not None and job.he.method == "he":
        content = _encrypted_reply(job, model, received, data, metrics)
    else:
        content = app.RecordDict({"arrays": app.ArrayRecord({k: v.detach().clone()
                                                             for k, v in shared_state(model, job.share).items()}),
                                  "metrics": app.MetricRecord(metrics)})
    if scaffold:
        k_lr = stats["steps"] * job.local.lr
        new = {n: ci[n] - c[n] + (start[n] - p.detach()) / k_lr for n, p in _trainable(model).items()}
        context.state[STATE_KEY] = app.ArrayRecord(new)
        content[DELTA_KEY] = app.ArrayRecord({n: new[n] - ci[n] for n in new})
    return content


def _encrypted_reply(job: ClientJob, model: nn.Module, received: Any, data: ClientData, metrics: dict[str, Any]
                     ) -> Any:
    """The reply of secure aggregation: the weighted update packed and encrypted, never the model."""
    from nnforge.federated._flower import require
    from nnforge.federated.secure import encrypt_update

    app = require("flwr.app")
    start = received["arrays"].to_torch_state_dict()
    state = model.state_dict()
    keys = [k for k, v in start.items() if torch.is_floating_point(v)]  # what the server sent, in its order
    update = torch.cat([(state[k].detach() - start[k]).flatten() for k in keys]).double().numpy()
    weight = data.examples / float(received["config"]["he-total"])
    content = app.RecordDict({"he": app.ConfigRecord({"ct": encrypt_update(job.he_context(), update, weight, job.he,
                                                                           job.he_clients)}),
                              "metrics": app.MetricRecord(metrics)})
    if job.he.audit_plaintext:  # measurement only (see SecureAggregationConfig)
        content[AUDIT_KEY] = app.ArrayRecord({"update": torch.from_numpy(update * weight)})
    return content


def make_client_app(jobs: list[ClientJob]) -> Any:
    """A Flower ``ClientApp`` whose ``train`` handler runs :func:`train_reply` for the job its message names."""
    from nnforge.federated._flower import require
    from nnforge.federated.secagg import SECAGG_CONFIGS, client_secagg_content

    def secagg_only(msg: Any, context: Any, call_next: Any) -> Any:  # Flower's SecAgg+ mod, for SecAgg+ rounds
        if SECAGG_CONFIGS in msg.content.config_records:
            return require("flwr.client.mod").secaggplus_mod(msg, context, call_next)
        return call_next(msg, context)

    client_app = require("flwr.clientapp").ClientApp(mods=[secagg_only])

    @client_app.train()  # type: ignore[misc]
    def train(msg: Any, context: Any) -> Any:
        app = require("flwr.app")
        if "fitins.config" in msg.content.config_records:  # a SecAgg+ round speaks Flower's legacy FitIns
            job = jobs[int(msg.content["fitins.config"].get(JOB_KEY, 0))]
            content = client_secagg_content(job, msg, context, lambda inner: train_content(job, inner, context))
            return app.Message(content=content, reply_to=msg)
        index = int(msg.content["config"].get(JOB_KEY, 0))
        return train_reply(jobs[index], msg, context)

    return client_app
