"""Federated LoRA from a recipe: a LoRA fine-tune becomes federated LoRA. (That only the adapters and head travel
and the frozen base stays put is checked by docs/federated.md's example, which tests/recipes/test_docs_examples.py
runs.)"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_a_lora_finetune_recipe_becomes_federated_lora(workdir):
    """``nnforge federate`` on a recipe whose model is fine-tuned with LoRA: the finetune step becomes a federate
    step with its adapters, learning rate and batch size; the preflight accepts it without training anything."""
    from nnforge.cli.federate import federated_recipe
    from nnforge.errors import ConfigError
    from nnforge.recipes.runner import prepare

    rec = federated_recipe("quickstart", ["data.options.passages_per_play=4"],
                           {"clients": 3, "rounds": 1, "partition": "source"})
    step = next(s for s in rec.steps if s.name == "federate")
    assert step.config.lora is not None and step.config.lora.layers == (3, 4, 5) and step.config.lora.r == 8
    assert step.config.local.optimizer == "adamw" and step.config.local.lr == 5e-4
    assert step.config.local.batch_size == 16
    prepare(rec)  # MiniLM and the adapters' targets are checked, the plays dealt, without training
    with pytest.raises(ConfigError, match="simulation engine"):
        prepare(federated_recipe("quickstart", [], {"clients": 3, "deployment": {"superlink": "127.0.0.1:9093",
                                                                                 "insecure": True}}))
