"""Structured pruning removes units physically: the pruned model equals the masked dense one, is smaller,
reloads from its spec with no mask, and exports to ONNX."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from nnforge.compress import apply_, prune_
from nnforge.compress.prune.structured import (
    PrunedCausalSelfAttention,
    RemovedBlock,
    StructuredPruneConfig,
    plan_structured,
)
from nnforge.config import load_config
from nnforge.errors import ConfigError
from nnforge.models import build
from nnforge.models.checkpoint import load_weights, save_weights
from nnforge.recipes.runs import rebuild

GPT = {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 16}


def _gpt(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build("char-gpt", **GPT).eval()


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 84, (3, 16), generator=torch.Generator().manual_seed(seed))


def _out(model: nn.Module, x: Any) -> torch.Tensor:
    with torch.no_grad():
        y = model(**x) if isinstance(x, dict) else model(x)
    return y[0] if isinstance(y, tuple) else y


def _masked_and_pruned(model: nn.Module, cfg: StructuredPruneConfig, **inputs: Any) -> tuple[nn.Module, nn.Module, Any]:
    structures, plan, _, _ = plan_structured(model, cfg, **inputs)
    masked = copy.deepcopy(model)
    for s in structures:
        if s.name in plan:
            s.mask(masked, plan[s.name]) if s.kind != "block" else s.cut(masked, plan[s.name])
    pruned = copy.deepcopy(model)
    report = prune_(pruned, cfg, **inputs)
    return masked, pruned, report


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_char_gpt_pruned_equals_masked_dense_and_has_the_expected_size(criterion: str) -> None:
    model = _gpt()
    cfg = StructuredPruneConfig(heads=0.5, ffn=0.5, criterion=criterion)
    masked, pruned, report = _masked_and_pruned(model, cfg, calibration=[_ids(s) for s in range(2)])
    x = _ids(9)
    assert torch.allclose(_out(pruned, x), _out(masked, x), atol=1e-5, rtol=0)
    assert not torch.allclose(_out(pruned, x), _out(model, x), atol=1e-3)  # something was really removed
    C, L = 32, 2  # per block: c_attn 3C·2h·8 and c_proj 2h·8·C (heads 4 → 2); c_fc and c_proj 4C → 2C
    removed = L * (3 * C * 16 + 16 * C + 2 * (2 * C * C))
    assert _params(model) - _params(pruned) == removed
    att = pruned.get_submodule("transformer.h.0.attn")
    assert isinstance(att, PrunedCausalSelfAttention) and att.n_head == 2 and att.c_attn.weight.shape == (48, 32)
    assert report.config["data"]["shapes"]["transformer.h.1.mlp.c_fc"] == 64
    assert report.bytes_after == report.bytes_before // 2  # every changed matrix lost half of its rows or columns
    assert "physically removed" in report.changed[0].detail


def test_digits_cnn_channels_and_batchnorm_are_cut_exactly() -> None:
    torch.manual_seed(0)
    model = build("digits-cnn").eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so a wrongly cut channel shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    cfg = StructuredPruneConfig(channels=0.5, ffn=0.0)
    masked, pruned, report = _masked_and_pruned(model, cfg)
    x = torch.rand(5, 64, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(_out(pruned, x), _out(masked, x), atol=1e-5, rtol=0)
    assert [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)] == [8, 16]
    assert pruned.features[4].num_features == 16 and pruned.head[2].in_features == 16 * 16
    assert report.config["data"]["shapes"] == {"features.0": 8, "features.3": 16, "head.2": 64}


def test_a_saved_variant_rebuilds_from_its_spec_with_no_mask(tmp_path) -> None:
    model = _gpt()
    report = prune_(model, StructuredPruneConfig(heads=0.25, ffn=0.5, blocks=0.5),
                    calibration=[_ids(s) for s in range(2)])
    assert sum(isinstance(m, RemovedBlock) for m in model.modules()) == 1
    spec = {"base": {"architecture": "char-gpt", "options": GPT}, "transforms": [report.config]}
    dense_path, path = tmp_path / "dense.safetensors", tmp_path / "pruned.safetensors"
    save_weights(_gpt(), dense_path, {**spec, "transforms": []})
    save_weights(model, path, spec)
    tensors, loaded_spec = load_weights(path)
    assert not any("mask" in k for k in tensors)
    again = rebuild(loaded_spec, tensors)
    x = _ids(4)
    assert torch.equal(_out(again, x), _out(model, x))
    assert path.stat().st_size < 0.45 * dense_path.stat().st_size  # one block gone, the other a quarter/half


def test_skeleton_needs_the_resolved_shapes_to_know_which_blocks_went() -> None:
    with pytest.raises(ConfigError, match="report.config"):
        apply_(_gpt(), StructuredPruneConfig(blocks=0.5), skeleton=True)


def test_shapes_give_non_uniform_counts_and_bad_names_are_refused() -> None:
    model = _gpt()
    report = prune_(model, StructuredPruneConfig(heads=0.0, ffn=0.0, shapes={"transformer.h.0.attn": 1,
                                                                             "transformer.h.1.mlp.c_fc": 24}))
    assert model.get_submodule("transformer.h.0.attn").n_head == 1
    assert model.get_submodule("transformer.h.1.attn").n_head == 4  # no fraction: left whole
    assert model.get_submodule("transformer.h.1.mlp.c_proj").in_features == 24
    assert {c.name for c in report.changed} == {"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                                                "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"}
    with pytest.raises(ConfigError, match="no prunable structure"):
        prune_(_gpt(), StructuredPruneConfig(shapes={"transformer.h.0.mlp": 3}))
    with pytest.raises(ConfigError, match="has 4"):
        prune_(_gpt(), StructuredPruneConfig(shapes={"transformer.h.0.attn": 5}))


@pytest.mark.parametrize(("multiple_of", "rounding", "kept"), [(1, "up", 77), (16, "up", 80), (16, "down", 64),
                                                              (128, "down", 77)])
def test_kept_ffn_counts_round_to_a_multiple_up_or_down(multiple_of: int, rounding: str, kept: int) -> None:
    # 128 neurons, 40% removed: round(76.8) = 77 kept; up -> 80 (37.5% removed), down -> 64 (at least 40%);
    # a count under one multiple is left as it is
    model = _gpt()
    prune_(model, StructuredPruneConfig(heads=0.0, ffn=0.4, multiple_of=multiple_of, rounding=rounding))
    assert [model.get_submodule(f"transformer.h.{i}.mlp.c_proj").in_features for i in range(2)] == [kept, kept]


def test_wanda_keeps_the_neuron_that_carries_the_signal() -> None:
    """A planted FFN: neuron 0 has small outgoing weights but the only large activation; magnitude drops it,
    Wanda keeps it."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[0.1, 1.0, 1.0, 1.0]] * 2))
    x = torch.zeros(16, 4)
    x[:, 0] = 100.0
    x[:, 1:] = 0.01
    kept = {}
    for criterion in ("magnitude", "wanda"):
        plan = plan_structured(model, StructuredPruneConfig(ffn=0.75, criterion=criterion), calibration=[x])
        kept[criterion] = plan.keep["0"].tolist()
    assert 0 not in kept["magnitude"] and kept["wanda"] == [0]


def _tiny_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    from nnforge.models.text import TextClassifier

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    return TextClassifier(transformers.BertModel(cfg, add_pooling_layer=False).eval(), None, 3).eval()


def _bert_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 50, (2, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.slow  # the first BertModel built in a process imports most of transformers
def test_bert_heads_ffn_and_blocks_are_removed_exactly_and_export_to_onnx(tmp_path) -> None:
    model = _tiny_bert()
    batch = _bert_batch()
    cfg = StructuredPruneConfig(heads=0.5, ffn=0.5, blocks=0.34, criterion="wanda")
    masked, pruned, report = _masked_and_pruned(model, cfg, calibration=[batch])
    assert torch.allclose(_out(pruned, batch), _out(masked, batch), atol=1e-5, rtol=0)
    layers = pruned.encoder.encoder.layer
    assert sum(isinstance(m, RemovedBlock) for m in layers) == 1
    att = next(m.attention.self for m in layers if not isinstance(m, RemovedBlock))
    assert att.num_attention_heads == 2 and att.query.out_features == 16
    ort = pytest.importorskip("onnxruntime")
    from nnforge.deploy.onnx import export_onnx

    path = export_onnx(pruned, tmp_path / "m.onnx", (batch["input_ids"], batch["attention_mask"]),
                       input_names=["ids", "mask"])
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"ids": batch["input_ids"].numpy(), "mask": batch["attention_mask"].numpy()})[0]
    assert abs(out - _out(pruned, batch).numpy()).max() < 1e-4
    skeleton = _tiny_bert()
    apply_(skeleton, load_config(report.config), skeleton=True)
    skeleton.load_state_dict(pruned.state_dict(), strict=True)
    assert torch.equal(_out(skeleton, batch), _out(pruned, batch))


@pytest.mark.parametrize("name", ["digits-cnn", "char-gpt"])
def test_a_pruned_model_exports_to_onnx_and_runs_as_in_pytorch(name: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from nnforge.deploy.onnx import export_onnx

    torch.manual_seed(0)
    model = build("digits-cnn").eval() if name == "digits-cnn" else _gpt()
    prune_(model, StructuredPruneConfig(channels=0.5, ffn=0.5, heads=0.5))
    x = torch.rand(2, 1, 8, 8) if name == "digits-cnn" else _ids()
    path = export_onnx(model, tmp_path / "m.onnx", (x,), input_names=["x"])
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert abs(out - _out(model, x).numpy()).max() < 1e-5


class _Residual(nn.Module):
    """conv1's output feeds a residual sum (its channels cannot go); conv2 → bn → relu → conv3 is a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        return h + self.conv3(torch.relu(self.bn(self.conv2(h))))


def test_a_branching_output_is_left_whole_and_the_filter_is_obeyed() -> None:
    torch.manual_seed(0)
    model = _Residual().eval()
    report = prune_(copy.deepcopy(model), StructuredPruneConfig(channels=0.5))
    assert report.config["data"]["shapes"] == {"conv2": 4}
    skipped = dict(report.skipped)
    assert "not part of a structure" in skipped["conv1"] and {c.name for c in report.changed} == {"conv2", "bn", "conv3"}
    kept = prune_(model, StructuredPruneConfig(channels=0.5), filter=lambda name, mod: name != "conv2")
    assert not kept.changed and dict(kept.skipped)["conv2"] == "left out by the filter"
    assert dict(kept.skipped)["conv3"] == "in conv2, left out by the filter"
    assert model.conv2.out_channels == 8
