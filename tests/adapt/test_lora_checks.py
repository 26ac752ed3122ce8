"""LoRA refuses what it cannot do right: tied weights, layers the model lacks, a second application; merging
thaws only what LoRA froze."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from nnforge.adapt import LoraConfig, apply_lora_, merge_lora_
from nnforge.errors import ConfigError


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([nn.ModuleDict({"query": nn.Linear(8, 8), "value": nn.Linear(8, 8)}) for _ in range(3)])
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.layer:
            x = torch.tanh(blk["query"](x) + blk["value"](x))
        return self.head(x)


def test_lora_on_a_tied_lm_head_is_refused_naming_both_modules():
    from nnforge.models import build

    model = build("char-gpt", n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=10)
    with pytest.raises(ConfigError, match=r"lm_head shares its weight with transformer\.wte"):
        apply_lora_(model, LoraConfig(r=2, target_modules=("lm_head",), trainable=()))
    assert not any("lora_" in n for n, _ in model.named_parameters())  # nothing was injected
    apply_lora_(model, LoraConfig(r=2, target_modules=("c_attn",), trainable=()))  # untied targets still work


@pytest.mark.parametrize("layers, match", [((3,), r"layers \[3\] are not layer indices.*0\.\.2"),
                                           ((-1,), r"layers \[-1\]"), ((1, 7), r"layers \[7\]"),
                                           ((), "is empty")])
def test_lora_layers_outside_the_model_are_refused(layers, match):
    with pytest.raises(ConfigError, match=match):
        apply_lora_(Block(), LoraConfig(target_modules=("query",), layers=layers), None)


def test_lora_twice_is_refused():
    model = Block()
    apply_lora_(model, LoraConfig(target_modules=("query",)), None)
    with pytest.raises(ConfigError, match="already has LoRA adapters"):
        apply_lora_(model, LoraConfig(target_modules=("value",)), None)
    merge_lora_(model)
    assert not hasattr(model, "peft_config")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT warned of "multiple adapters" when its record was left behind
        apply_lora_(model, LoraConfig(target_modules=("value",)), None)  # after merging, again


def test_merge_thaws_only_what_lora_froze():
    model = Block()
    model.layer[0]["value"].weight.requires_grad_(False)  # the caller froze this before LoRA
    apply_lora_(model, LoraConfig(target_modules=("query",)), None)
    assert merge_lora_(model) == 3
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"layer.0.value.weight"}
