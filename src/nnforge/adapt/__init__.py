"""Adapting pretrained models: LoRA (via PEFT) and the fine-tuning of text classifiers."""

from __future__ import annotations

from nnforge.adapt.finetune import FinetuneConfig, FinetuneResult, finetune_classifier
from nnforge.adapt.lora import LoraConfig, apply_lora_, merge_lora_, trainable_parameters

__all__ = ["LoraConfig", "apply_lora_", "merge_lora_", "trainable_parameters", "FinetuneConfig",
           "FinetuneResult", "finetune_classifier"]
