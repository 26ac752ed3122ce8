"""The ``MoE`` layer: a router, ``E`` experts and optional shared experts, in place of a transformer's FFN.

``MoE(d_model, MoEConfig(...))(x)`` takes and returns ``(..., d_model)``, so it drops in where the dense FFN was.
Balancing (``MoEConfig.balance``):

* ``"aux-loss"`` — the Switch/GShard auxiliary loss (weight ``aux_loss_weight``) and the router z-loss (weight
  ``z_loss_weight``) go to every :func:`collect_routing` block, whose ``loss`` the training loss adds;
* ``"aux-free"`` — DeepSeek-V3: no auxiliary loss; after each training forward the top-k router's selection bias
  moves by ``bias_update_rate`` towards the under-loaded experts (the z-loss still applies);
* ``"none"`` — neither (the collapse the diagnostics are there to catch).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from nnforge.config import Config, config_type
from nnforge.moe._experts import Experts
from nnforge.moe._report import active_collectors, balancing_losses
from nnforge.moe.routers import ROUTERS

__all__ = ["MoE", "MoEConfig", "freeze_routers_"]


@config_type("moe")
class MoEConfig(Config):
    """An MoE layer's shape, router, balancing and dispatch."""

    num_experts: int = Field(8, ge=1, le=4096)
    hidden: int = Field(256, ge=1, description="each expert's FFN width")
    router: str = Field("top-k", description="a registered router (nnforge.moe.ROUTERS)")
    router_options: dict[str, Any] = Field(default_factory=dict, description="the router's Options")
    shared_experts: int = Field(0, ge=0, le=64, description="dense experts every token goes through (DeepSeekMoE)")
    shared_hidden: int | None = Field(None, ge=1, description="width of each shared expert (default: hidden)")
    balance: Literal["aux-loss", "aux-free", "none"] = "aux-loss"
    aux_loss_weight: float = Field(0.01, ge=0)
    z_loss_weight: float = Field(1e-3, ge=0)
    bias_update_rate: float = Field(1e-3, ge=0, description="aux-free: bias step per training forward")
    dispatch: Literal["auto", "fused", "grouped", "padded", "dense", "reference"] = Field(
        "auto", description="auto: fused for plain Linear experts, else grouped")
    activation: Literal["gelu", "relu", "silu"] = "gelu"
    bias: bool = Field(True, description="biases in the experts' linears")

    @model_validator(mode="after")
    def _router_known(self) -> MoEConfig:
        cls = ROUTERS.get(self.router, where="MoEConfig.router")
        cls.Options.model_validate(self.router_options)
        if self.balance == "aux-free" and not hasattr(cls, "update_bias"):
            raise ValueError(f"balance 'aux-free' moves a selection bias that the {self.router!r} router does not "
                             "have; use the top-k router or another balance")
        return self

    def router_config(self) -> Any:
        return ROUTERS.get(self.router).Options.model_validate(self.router_options)


class MoE(nn.Module):
    """Mixture-of-experts FFN: ``x (..., d) → (..., d)``; see the module docstring for balancing.

    Under torchrun (DDP) an expert may receive no token on one rank: ``ddp_unused_parameters`` tells
    :func:`nnforge.train.fit` to let DDP find such parameters, and the auxiliary-loss-free bias moves by the
    load summed over all ranks, so that every rank (and a single process on the same global batch) moves it alike.
    """

    ddp_unused_parameters = True

    def __init__(self, d_model: int, config: MoEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MoEConfig()
        self.d_model = d_model
        self.router = ROUTERS.get(config.router)(d_model, config.num_experts, config.router_config())
        self.experts = Experts(config.num_experts, d_model, config.hidden, activation=config.activation,
                               bias=config.bias)
        self.shared = (Experts(config.shared_experts, d_model, config.shared_hidden or config.hidden,
                               activation=config.activation, bias=config.bias) if config.shared_experts else None)
        self.router_frozen = False  # freeze_routers_: no gradient to the router and no aux-free bias moves

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.d_model)  # (N, d)
        routing = self.router(flat)
        out = self.experts.dispatch(flat, routing, self.config.dispatch)
        if self.shared is not None:
            for expert in self.shared:
                out = out + expert(flat)
        collectors = active_collectors()
        if collectors:
            aux, z = balancing_losses(routing)
            c = self.config
            loss = c.z_loss_weight * z + (c.aux_loss_weight * aux if c.balance == "aux-loss" else 0.0)
            for collector in collectors:
                collector.add(self, routing, (aux, z), loss if c.balance != "none" else None)
        if self.training and self.config.balance == "aux-free" and torch.is_grad_enabled() and not self.router_frozen:
            self.router.update_bias(_global(routing.counts), self.config.bias_update_rate)
        return out.reshape(shape)

    @torch.no_grad()
    def keep_experts_(self, keep: list[int]) -> None:
        """Keep only the experts ``keep`` (in that order), removing the rest physically: their FFNs, their rows of
        the router's gate and selection bias. ``num_experts`` becomes ``len(keep)``.

        Raises:
            ValueError: ``keep`` repeats or misses an index, or keeps fewer experts than the router picks per token.
        """
        e = self.config.num_experts
        if not keep or len(set(keep)) != len(keep) or not all(0 <= i < e for i in keep):
            raise ValueError(f"keep_experts_: distinct expert indices in [0, {e}) needed; got {keep}")
        k = int(getattr(getattr(self.router, "options", None), "k", 1))  # expert choice: no k, one is enough
        if len(keep) < k:
            raise ValueError(f"keep_experts_: the router picks {k} experts per token; keeping {len(keep)} is too few")
        old = self.experts
        new = Experts(len(keep), self.d_model, old.hidden, activation=old.activation, bias=False)
        for i, j in enumerate(keep):
            new[i] = old[j]
        self.experts = new
        index = torch.tensor(keep, dtype=torch.long)
        for module in self.router.modules():
            for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                if t.shape[:1] == (e,):
                    kept = t.detach().index_select(0, index.to(t.device)).clone()
                    if isinstance(t, nn.Parameter):
                        setattr(module, name, nn.Parameter(kept, requires_grad=t.requires_grad))
                    else:
                        module.register_buffer(name, kept)
        if hasattr(self.router, "num_experts"):
            self.router.num_experts = len(keep)
        self.config = self.config.model_copy(update={"num_experts": len(keep)})

    def extra_repr(self) -> str:
        c = self.config
        return (f"d_model={self.d_model}, experts={c.num_experts}x{c.hidden}, router={c.router}, "
                f"shared={c.shared_experts}, balance={c.balance}, dispatch={c.dispatch}")


def _global(counts: torch.Tensor) -> torch.Tensor:
    """``counts`` summed over the ranks of a running process group (itself on one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        counts = counts.clone()
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return counts


def freeze_routers_(model: nn.Module, frozen: bool = True) -> list[str]:
    """Freeze (or unfreeze) the router of every MoE layer in ``model``: its parameters get no gradient and the
    auxiliary-loss-free selection bias stops moving, so fine-tuning cannot retrain the routing itself (the layers
    below still change what reaches each router, which the drift report measures). The balancing losses are still
    computed and reported. Returns the layers' module paths.

    Raises:
        ValueError: ``model`` has no MoE layer.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, MoE)]
    if not names:
        raise ValueError("freeze_routers_: the model has no MoE layer")
    for name in names:
        layer = model.get_submodule(name) if name else model
        assert isinstance(layer, MoE)
        layer.router_frozen = frozen
        for p in layer.router.parameters():
            p.requires_grad_(not frozen)
    return names
