"""Experts are ordinary Linear modules: quantize_ quantizes each expert's projections (the router's gate stays in
full precision, listed as skipped) and the grouped dispatch runs them; the padded dispatch, which stacks weights,
refuses them by name."""

from __future__ import annotations

import pytest
import torch

from nnforge.compress import Int8WeightOnlyConfig, quantize_
from nnforge.moe import MoEConfig, build_moe_gpt, collect_routing


def test_quantize_reaches_every_expert_and_the_model_still_routes():
    torch.manual_seed(0)
    model = build_moe_gpt(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=20,
                          moe={"num_experts": 4, "hidden": 64, "router_options": {"k": 2}}).eval()
    idx = torch.randint(0, 20, (2, 16))
    with torch.no_grad():
        want = model(idx)[0]
    report = quantize_(model, Int8WeightOnlyConfig())
    changed = {c.name for c in report.changed}
    skipped = dict(report.skipped)
    assert "transformer.h.0.mlp.router.gate" not in changed and "RouterGate" in skipped["transformer.h.0.mlp.router.gate"]
    for layer in range(2):
        for e in range(4):
            for proj in ("c_fc", "c_proj"):
                assert f"transformer.h.{layer}.mlp.experts.{e}.{proj}" in changed
    with torch.no_grad(), collect_routing(model) as routing:
        got = model(idx)[0]
    assert len(routing.reports) == 2
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    layer = model.transformer.h[0].mlp
    layer.config = layer.config.model_copy(update={"dispatch": "padded"})
    with pytest.raises(ValueError, match="needs plain nn.Linear experts"):
        model(idx)


def test_moe_config_round_trips_through_its_dict():
    cfg = MoEConfig(num_experts=4, router_options={"k": 1, "score": "sigmoid"}, balance="aux-free")
    assert MoEConfig.model_validate(cfg.model_dump()) == cfg


def test_lora_through_peft_reaches_each_expert_and_trains_only_the_adapters():
    from nnforge.adapt import LoraConfig, apply_lora_

    torch.manual_seed(0)
    model = build_moe_gpt(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=20,
                          moe={"num_experts": 4, "hidden": 64, "router_options": {"k": 2}})
    report = apply_lora_(model, LoraConfig(r=2, target_modules=("c_fc",), trainable=()))
    assert {c.name for c in report.changed} == {f"transformer.h.0.mlp.experts.{e}.c_fc" for e in range(4)}
    idx = torch.randint(0, 20, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.grad is not None for n, p in model.named_parameters() if "experts.0.c_fc.lora_B" in n)
