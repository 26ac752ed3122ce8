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

from nnforge.compress._transform import ModuleChange, ModuleFilter, TransformReport, register_transform, tensor_bytes
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
        layers: only these transformer layer indices get adapters (None: all). Adapting only the top
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


@register_transform(LoraConfig)
def apply_lora_(model: nn.Module, config: LoraConfig, filter: ModuleFilter | None = None) -> TransformReport:
    """Insert LoRA adapters into ``model`` in place and freeze everything but adapters and ``trainable``."""
    peft = _peft()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and n.rsplit(".", 1)[-1] in config.target_modules and (filter is None or filter(n, m))
             and (config.layers is None or _layer_index(n) in config.layers)]
    if not names:
        have = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"LoraConfig.target_modules {list(config.target_modules)} match no Linear module; "
                          f"Linear module names here: {have}")
    missing = [t for t in config.trainable if not any(n == t or n.startswith(t + ".") for n, _ in model.named_modules())]
    if missing:
        raise ConfigError(f"LoraConfig.trainable names {missing} are not submodules of the model")
    pcfg = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=names)
    peft.inject_adapter_in_model(pcfg, model)
    for n, p in model.named_parameters():
        p.requires_grad = "lora_" in n or any(n == t or n.startswith(t + ".") for t in config.trainable)
    report = TransformReport("lora", config.to_dict())
    for n, m in model.named_modules():
        if hasattr(m, "lora_A") and n in names:
            added = sum(tensor_bytes(p) for k, p in m.named_parameters() if "lora_" in k)
            base = tensor_bytes(m.get_base_layer().weight)
            report.changed.append(ModuleChange(n, "Linear+LoRA", base, base + added, 0.0, f"r={config.r}"))
    return report


def merge_lora_(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base weight and unwrap it; returns how many were merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, layer.get_base_layer())
    for p in model.parameters():
        p.requires_grad = True
    return len(layers)
