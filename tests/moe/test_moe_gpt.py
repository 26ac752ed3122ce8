"""moe-gpt (the char-GPT with MoE FFNs) and upcycling a trained dense FFN into an MoE."""

from __future__ import annotations

import pytest
import torch

from nnforge.errors import ConfigError
from nnforge.models import build
from nnforge.models.char_gpt import CharGPT, CharGPTConfig
from nnforge.moe import MoE, MoEConfig, MoEGPT, UpcycleConfig, collect_routing, upcycle_

SMALL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 20}


def test_moe_gpt_is_a_registered_char_lm_whose_loss_includes_balancing():
    import nnforge.moe  # noqa: F401  (registers it)
    from nnforge.models import task_of

    torch.manual_seed(0)
    model = build("moe-gpt", **SMALL, moe={"num_experts": 4, "hidden": 32, "router_options": {"k": 2}})
    assert isinstance(model, MoEGPT) and task_of("moe-gpt") == "char-lm"
    assert list(model.moe_layers()) == ["transformer.h.0.mlp", "transformer.h.1.mlp"]
    idx = torch.randint(0, 20, (3, 16))
    with collect_routing(model) as routing:
        logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 20) and len(routing.reports) == 2
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 20), idx.reshape(-1))
    extra = float(routing.loss.detach())
    assert float((loss - ce).detach()) == pytest.approx(extra, rel=1e-5) and extra > 0
    loss.backward()
    assert model.transformer.h[0].mlp.router.gate.weight.grad.abs().sum() > 0
    every_other = build("moe-gpt", **{**SMALL, "n_layer": 4}, moe_every=2, moe={"num_experts": 2, "hidden": 8})
    assert list(every_other.moe_layers()) == ["transformer.h.1.mlp", "transformer.h.3.mlp"]


def test_a_moe_gpt_recipe_model_section_is_accepted():
    from nnforge.recipes.schema import parse_recipe

    recipe = parse_recipe({"name": "m", "model": {"architecture": "moe-gpt", "options": SMALL},
                           "data": {"dataset": "shakespeare-char"}, "steps": ["train"]})
    assert recipe.model.architecture == "moe-gpt"


def _dense(seed=0):
    torch.manual_seed(seed)
    return CharGPT(CharGPTConfig(**SMALL, bias=True)).double().eval()


def test_copy_upcycling_computes_exactly_what_the_dense_model_did():
    dense = _dense()
    idx = torch.randint(0, 20, (2, 16))
    want = dense(idx)[0]
    report = upcycle_(dense, UpcycleConfig(moe=MoEConfig(num_experts=4, router_options={"k": 2})))
    assert report["changed"] == ["transformer.h.0.mlp", "transformer.h.1.mlp"] and not report["skipped"]
    assert report["params_after"] > report["params_before"]
    assert isinstance(dense.transformer.h[0].mlp, MoE) and dense.transformer.h[0].mlp.config.hidden == 4 * 32
    torch.testing.assert_close(dense(idx)[0], want, rtol=1e-9, atol=1e-10)
    noisy = _dense()
    upcycle_(noisy, UpcycleConfig(moe=MoEConfig(num_experts=4), noise=0.01, seed=1))
    experts = noisy.transformer.h[0].mlp.experts
    assert not torch.equal(experts[0].c_fc.weight, experts[1].c_fc.weight)  # the noise breaks the symmetry
    assert (noisy(idx)[0] - want).abs().max() < 0.05


def test_partition_upcycling_deals_the_hidden_units_and_matches_the_dense_output_in_expectation():
    dense = _dense()
    idx = torch.randint(0, 20, (2, 16))
    x = torch.randn(64, 32, dtype=torch.float64)
    want = dense.transformer.h[0].mlp(x)
    upcycle_(dense, UpcycleConfig(moe=MoEConfig(num_experts=4, router_options={"k": 4}), init="partition"))
    moe = dense.transformer.h[0].mlp
    assert moe.config.hidden == 32  # 128 hidden units / 4 experts
    torch.testing.assert_close(moe(x), want, rtol=1e-9, atol=1e-10)  # k = E: every part, weights 1/E each
    dense(idx)  # the whole model still runs


def test_upcycling_refuses_what_it_cannot_do_and_names_it():
    with pytest.raises(ConfigError, match="no module named 'ffn'"):
        upcycle_(_dense(), UpcycleConfig(target="ffn"))
    with pytest.raises(ConfigError, match="needs Linears 'fc1'"):
        upcycle_(_dense(), UpcycleConfig(fc_in="fc1"))
    with pytest.raises(ConfigError, match="not a multiple"):
        upcycle_(_dense(), UpcycleConfig(moe=MoEConfig(num_experts=3), init="partition"))
