"""Federated LoRA: a text classifier with PEFT adapters on a frozen MiniLM trains by federated learning on
passages dealt to the clients by play, and only the trainable tensors (adapters and head) travel."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.slow


def test_only_the_adapters_and_head_travel_and_the_frozen_base_stays_put():
    from nnforge import models
    from nnforge.adapt.lora import LoraConfig, apply_lora_
    from nnforge.data import load
    from nnforge.federated import FederatedConfig, federate_

    data = load("shakespeare-genre", passages_per_play=4)
    torch.manual_seed(0)
    net = models.load("minilm", num_classes=3, seed=0)
    apply_lora_(net, LoraConfig(r=4, alpha=8, layers=[5]))
    before = copy.deepcopy(net.state_dict())
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    trainable_bytes = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    full_bytes = sum(v.numel() * v.element_size() for v in net.state_dict().values())
    assert trainable_bytes < 0.01 * full_bytes
    config = FederatedConfig(clients=3, rounds=1, partition="source",
                             local={"steps": 2, "batch_size": 4, "optimizer": "adamw", "optimizer_options": {"lr": 1e-3}})
    result = federate_(net, data, config)
    (rnd,) = result.rounds
    assert rnd.replied == 3 and 0 <= rnd.evaluation["accuracy"] <= 1 and rnd.evaluation["loss"] > 0
    # what went down to each client and came back is the trainable tensors, not the 90 MB model
    assert 3 * trainable_bytes <= rnd.bytes_down < 3 * trainable_bytes * 1.05
    assert 3 * trainable_bytes <= rnd.bytes_up < 3 * trainable_bytes * 1.05
    # whole plays per client: no play's passages are split between two clients
    assert sum(p["examples"] for p in result.partition) == len(data.split("train"))
    after = net.state_dict()
    moved = {n for n in after if not torch.equal(after[n], before[n])}
    assert moved and moved <= trainable  # the frozen base did not move; the adapters or head did


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
