"""LoRA on any ``nn.Module`` through PEFT, applied in place, and merged back before compression.

PEFT does the adapter work (``inject_adapter_in_model``); nnforge adds a validated config, freezing
that leaves chosen extra modules (a classification head) trainable, a report, and ``merge_lora_``
which folds the adapters into the base weights and removes PEFT's wrappers so that the model is a plain
module again (what quantization expects).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import nn

from nnforge.compress import (
    ModuleChange,
    ModuleFilter,
    TransformReport,
    register_transform,
    tensor_bytes,
    weight_holders,
)
from nnforge.config import Config, config_type
from nnforge.errors import ConfigError, MissingDependencyError

__all__ = ["LoraConfig", "apply_lora_", "merge_lora_", "trainable_parameters"]


@config_type("lora")
class LoraConfig(Config):
    """Low-rank adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

    Args:
        r: adapter rank.
        alpha: scaling numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapter input.
        target_modules: names (suffixes) of the Linear modules that get adapters.
        trainable: names of other submodules left trainable (e.g. a new classification head).
        layers: only these transformer layer indices get adapters (None: all); each must be a layer index
            of the target modules (an empty or out-of-range list is refused). Adapting only the top
            layers also shortens the backward pass, which stops below the lowest adapter.
    """

    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("query", "key", "value", "dense")
    trainable: tuple[str, ...] = ("head",)
    layers: tuple[int, ...] | None = None


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise MissingDependencyError("LoRA needs peft: pip install 'nnforge[hf]'") from exc
    return peft


def _layer_index(name: str) -> int | None:
    """The transformer layer a module belongs to: the first integer path component (``layer.3.…``)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


_FROZEN_BY_LORA = "_nnforge_lora_froze"  # names of the parameters apply_lora_ froze (merge_lora_ thaws these)


def _has_lora(model: nn.Module) -> bool:
    return any(hasattr(m, "lora_A") for m in model.modules())


def _check_layers(config: LoraConfig, targets: list[str]) -> None:
    """``config.layers`` must name layer indices that the target modules have: a clear error, not an empty match."""
    if config.layers is None:
        return
    if not config.layers:
        raise ConfigError("LoraConfig.layers is empty: name at least one layer index, or None for all layers")
    have = sorted({i for n in targets if (i := _layer_index(n)) is not None})
    bad = sorted(set(config.layers) - set(have))
    if bad:
        where = f"{have[0]}..{have[-1]}" if have == list(range(have[0], have[-1] + 1)) else str(have) if have else "none"
        raise ConfigError(f"LoraConfig.layers {bad} are not layer indices of this model's "
                          f"{list(config.target_modules)} modules (layers: {where})")


def _check_ties(model: nn.Module, names: list[str]) -> None:
    """An adapter on a weight shared with another module (an LM head tied to the token embedding) would be folded
    into the shared tensor by merge_lora_, changing the other module too: refused."""
    holders = weight_holders(model)
    tied = {n: others for n in names
            if (others := [h for h in holders.get(id(model.get_submodule(n).weight), []) if h != n])}
    if tied:
        desc = "; ".join(f"{n} shares its weight with {', '.join(o)}" for n, o in tied.items())
        raise ConfigError(f"LoRA cannot adapt a tied weight ({desc}): merging would change the other module too. "
                          f"Leave {sorted(tied)} out of LoraConfig.target_modules (or untie the weights first).")


@register_transform(LoraConfig)
def apply_lora_(model: nn.Module, config: LoraConfig, filter: ModuleFilter | None = None) -> TransformReport:
    """Insert LoRA adapters into ``model`` in place and freeze everything but adapters and ``trainable``.

    Raises:
        ConfigError: the model already has LoRA adapters; no Linear module matches ``target_modules``;
            ``layers`` names indices the model does not have (or none); a target's weight is tied to another
            module's (an LM head sharing the token embedding); ``trainable`` names no submodule.
    """
    if _has_lora(model):
        raise ConfigError("the model already has LoRA adapters: merge_lora_ it before applying LoRA again")
    peft = _peft()
    candidates = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
                  and n.rsplit(".", 1)[-1] in config.target_modules and (filter is None or filter(n, m))]
    if not candidates:
        have = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"LoraConfig.target_modules {list(config.target_modules)} match no Linear module; "
                          f"Linear module names here: {have}")
    _check_layers(config, candidates)
    names = [n for n in candidates if config.layers is None or _layer_index(n) in config.layers]
    _check_ties(model, names)
    missing = [t for t in config.trainable if not any(n == t or n.startswith(t + ".") for n, _ in model.named_modules())]
    if missing:
        raise ConfigError(f"LoraConfig.trainable names {missing} are not submodules of the model")
    pcfg = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=names)
    was_trainable = {id(p) for p in model.parameters() if p.requires_grad}  # PEFT freezes the base layers itself
    peft.inject_adapter_in_model(pcfg, model)
    froze = []
    for n, p in model.named_parameters():
        keep = "lora_" in n or any(n == t or n.startswith(t + ".") for t in config.trainable)
        if id(p) in was_trainable and not keep:
            froze.append(n.replace(".base_layer.", "."))  # the name it has again once merged
        p.requires_grad = keep
    setattr(model, _FROZEN_BY_LORA, froze)
    report = TransformReport("lora", config.to_dict())
    for n, m in model.named_modules():
        if hasattr(m, "lora_A") and n in names:
            added = sum(tensor_bytes(p) for k, p in m.named_parameters() if "lora_" in k)
            base = tensor_bytes(m.get_base_layer().weight)
            report.changed.append(ModuleChange(n, "Linear+LoRA", base, base + added, 0.0, f"r={config.r}"))
    return report


def merge_lora_(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base weight and unwrap it; returns how many were merged.

    The parameters that :func:`apply_lora_` froze become trainable again; those that were frozen before it
    ran stay frozen.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, layer.get_base_layer())
    froze = set(getattr(model, _FROZEN_BY_LORA, ()))
    for n, p in model.named_parameters():
        if n in froze:
            p.requires_grad = True
    for attr in (_FROZEN_BY_LORA, "peft_config"):  # PEFT's record of the adapters it injected: none are left
        if attr in model.__dict__:
            delattr(model, attr)
    return len(layers)
