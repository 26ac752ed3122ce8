"""LoRA, LP-FT, WiSE-FT interpolation and the cached split forward of text classifiers; LoRA refuses what it cannot
do right (tied weights, layers the model lacks, a second application) and merging thaws only what LoRA froze."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from nnforge.adapt import LoraConfig, apply_lora_, merge_lora_
from nnforge.adapt.finetune import _interpolate, _length_bucketed_batches
from nnforge.adapt.probe import fit_linear_probe
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


def _train_a_bit(model: nn.Module) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    for _ in range(5):
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def test_lora_targets_chosen_layers_and_merges_back_to_plain_linear():
    torch.manual_seed(0)
    model = Block()
    report = apply_lora_(model, LoraConfig(r=2, target_modules=("query",), layers=(1, 2)), None)
    assert sorted(c.name for c in report.changed) == ["layer.1.query", "layer.2.query"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} >= {"head.weight", "head.bias"}
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("layer.0"))
    _train_a_bit(model)
    model.eval()  # no adapter dropout
    x = torch.randn(4, 8)
    before = model(x)
    assert merge_lora_(model) == 2
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("query"))
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


def test_lora_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="match no Linear module"):
        apply_lora_(Block(), LoraConfig(target_modules=("nope",)), None)
    with pytest.raises(ConfigError, match="trainable names"):
        apply_lora_(Block(), LoraConfig(trainable=("classifier",)), None)


def test_wise_interpolation_scales_the_merged_update_linearly():
    torch.manual_seed(0)
    model = Block()
    apply_lora_(model, LoraConfig(r=2, target_modules=("query", "value")), None)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    start = {k: v.clone() for k, v in model.state_dict().items() if k in trainable}
    _train_a_bit(model)
    end = {k: v.clone() for k, v in model.state_dict().items() if k in trainable}
    merged_w = {}
    for alpha in (0.0, 0.5, 1.0):
        m = copy.deepcopy(model)
        m.load_state_dict(_interpolate(start, end, alpha), strict=False)
        merge_lora_(m)
        merged_w[alpha] = m.layer[0]["query"].weight.detach().clone()
    torch.testing.assert_close(merged_w[0.5], (merged_w[0.0] + merged_w[1.0]) / 2, rtol=1e-5, atol=1e-6)
    assert not torch.equal(merged_w[0.0], merged_w[1.0])


def test_bucketed_batches_cover_every_index_once_and_are_seeded():
    texts = ["x" * (i % 37) for i in range(300)]
    a = _length_bucketed_batches(texts, 16, torch.Generator().manual_seed(3))
    b = _length_bucketed_batches(texts, 16, torch.Generator().manual_seed(3))
    assert sorted(torch.cat(a).tolist()) == list(range(300))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_linear_probe_balanced_weights_and_binary_case():
    """``class_weight="balanced"`` reaches scikit-learn: on 9:1 overlapping classes the unweighted probe finds a
    third of the minority class, the balanced one nine in ten (measured 0.35 and 0.90)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    x = torch.cat([torch.randn(180, 4) + 0.5, torch.randn(20, 4) - 0.5])
    y = [0] * 180 + [1] * 20
    balanced = fit_linear_probe(x, y, Cs=(1.0,), num_classes=2, class_weight="balanced")
    plain = fit_linear_probe(x, y, Cs=(1.0,), num_classes=2)
    assert balanced.weight.shape == (2, 4) and balanced.bias.shape == (2,)
    # binary: the class-1 minus class-0 logit is scikit-learn's decision function for the balanced fit
    ref = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced").fit(x.numpy(), np.asarray(y))
    torch.testing.assert_close(balanced.weight[1] - balanced.weight[0], torch.from_numpy(ref.coef_[0]).float())
    torch.testing.assert_close(balanced.bias[1] - balanced.bias[0], torch.tensor(float(ref.intercept_[0])))
    minority = torch.tensor(y) == 1

    def recall(probe) -> float:
        return float((probe.predict(x)[minority] == 1).float().mean())

    assert recall(balanced) >= 0.8 and recall(plain) <= 0.5, (recall(balanced), recall(plain))


@pytest.mark.slow
def test_split_forward_equals_forward(minilm):
    batch = minilm.tokenize(["Now is the winter of our discontent", "Hi"])
    with torch.no_grad():
        ref = minilm(batch["input_ids"], batch["attention_mask"])
        for k in (0, 3, minilm.num_layers):
            hidden = minilm.hidden_at(k, batch["input_ids"], batch["attention_mask"])
            torch.testing.assert_close(minilm.forward_from(k, hidden, batch["attention_mask"]), ref)


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
