"""``prune_`` with unstructured and N:M patterns: exact sparsity, scope, what is skipped and why, round trips."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nnforge.compress import (
    Int8WeightOnlyConfig,
    NMConfig,
    UnstructuredConfig,
    apply_,
    load_transform_config,
    prune_,
    transform_types,
)
from nnforge.compress.prune import sparsity_of
from nnforge.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only wait on a busy machine


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 20)
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.LayerNorm(32)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.fc2(torch.relu(self.fc1(self.emb(ids))))))


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def test_magnitude_zeroes_exactly_the_smallest_weights_of_each_layer() -> None:
    model = _net()
    before = model.fc1.weight.detach().clone()
    report = prune_(model, UnstructuredConfig(sparsity=0.5))
    assert {c.name for c in report.changed} == {"fc1", "fc2", "head"}
    w = model.fc1.weight.detach()
    assert int((w == 0).sum()) == 512  # exactly half of 64 x 16
    kept = before.abs()[w != 0]
    assert float(kept.min()) >= float(before.abs()[w == 0].max())  # no kept weight is smaller than a dropped one
    assert torch.equal(w[w != 0], before[w != 0])  # magnitude does not touch what it keeps
    change = next(c for c in report.changed if c.name == "fc1")
    assert change.bytes_after == change.bytes_before  # zeros stored dense save nothing, and the report says so
    assert "sparsity 0.5000" in change.detail and "save no bytes" in change.detail
    assert change.error == pytest.approx(float((before - w).norm() / before.norm()))


def test_everything_not_pruned_is_reported_with_a_reason() -> None:
    model = _net()
    report = prune_(model, UnstructuredConfig(sparsity=0.3, skip=("head",)))
    skipped = dict(report.skipped)
    assert {"emb", "conv", "norm", "head"} <= set(skipped)
    assert "add 'conv' to modules" in skipped["conv"] and "skip" in skipped["head"]
    assert float((model.head.weight == 0).float().mean()) == 0.0
    report = prune_(_net(), UnstructuredConfig(sparsity=0.3, modules=("linear", "conv")))
    assert "conv" in {c.name for c in report.changed}


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_nm_keeps_n_of_every_m_consecutive_inputs(n: int, m: int) -> None:
    model = _net()
    before = model.fc2.weight.detach().clone()
    prune_(model, NMConfig(n=n, m=m))
    groups = model.fc2.weight.detach().reshape(32, -1, m)
    assert ((groups != 0).sum(-1) == n).all()
    # the kept ones are the n largest of each group
    top = before.abs().reshape(32, -1, m).topk(n, dim=-1).values.sum(-1)
    assert torch.allclose(groups.abs().sum(-1), top)


def test_nm_skips_a_layer_whose_inputs_do_not_divide() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4))
    report = prune_(model, NMConfig(n=4, m=8))
    assert [c.name for c in report.changed] == ["1"]
    assert "not a multiple of 8" in dict(report.skipped)["0"]


def test_global_scope_meets_the_overall_sparsity_with_different_ratios() -> None:
    model = _net()
    with torch.no_grad():
        model.fc2.weight.mul_(10.0)  # one layer of large weights: a global threshold spares it
    prune_(model, UnstructuredConfig(sparsity=0.4, scope="global"))
    ratios = sparsity_of(model, (nn.Linear,))
    sizes = {n: model.get_submodule(n).weight.numel() for n in ratios}
    overall = sum(ratios[n] * sizes[n] for n in ratios) / sum(sizes.values())
    assert overall == pytest.approx(0.4, abs=1e-3)
    assert ratios["fc2"] < 0.2 and min(ratios["fc1"], ratios["head"]) > 0.5


def test_plan_sets_per_layer_ratios() -> None:
    model = _net()
    report = prune_(model, UnstructuredConfig(sparsity=0.5, plan={"fc1": 0.25, "head": 0.0}))
    ratios = sparsity_of(model, (nn.Linear,))
    assert ratios["fc1"] == 0.25 and ratios["fc2"] == 0.5 and ratios["head"] == 0.0
    assert "planned sparsity is 0" in dict(report.skipped)["head"]


def test_prune_refuses_a_quantization_config_and_quantize_kind_stays_apart() -> None:
    with pytest.raises(ConfigError, match="quantize_"):
        prune_(_net(), Int8WeightOnlyConfig())
    assert {"unstructured", "nm"} <= set(transform_types("prune"))
    assert "unstructured" not in transform_types("quantize")


def test_configs_are_validated_and_load_by_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'magnitude'"):
        UnstructuredConfig(criterion="magnitud")
    with pytest.raises(ConfigError):
        NMConfig(n=4, m=4)
    with pytest.raises(ConfigError):
        UnstructuredConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match="plan"):
        UnstructuredConfig(scope="global", plan={"fc1": 0.1})
    with pytest.raises(ConfigError, match="compare"):
        UnstructuredConfig(scope="global", compare="row")
    cfg = load_transform_config({"type": "nm", "data": {"n": 4, "m": 8}}, "prune")
    assert cfg == NMConfig(n=4, m=8)


def test_a_tied_weight_is_left_dense_unless_both_sides_are_pruned() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    model[1].weight = model[0].weight
    report = prune_(model, UnstructuredConfig(sparsity=0.5), filter=lambda n, m: n == "0")
    assert "tied with 1" in dict(report.skipped)["0"] and not report.changed
    report = prune_(model, UnstructuredConfig(sparsity=0.5))
    assert float((model[0].weight == 0).float().mean()) == 0.5


def test_saved_pruned_model_reloads_through_a_skeleton(tmp_path) -> None:
    model = _net()
    cfg = UnstructuredConfig(sparsity=0.7)
    prune_(model, cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    skeleton = _net(seed=3)
    apply_(skeleton, cfg, skeleton=True)
    skeleton.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
    ids = torch.randint(0, 20, (2, 5))
    with torch.no_grad():
        assert torch.equal(skeleton(ids), model(ids))
    assert sparsity_of(skeleton, (nn.Linear,))["fc1"] == pytest.approx(0.7, abs=1e-3)


def test_char_gpt_pruned_by_wanda_then_quantized_rebuilds_from_its_spec() -> None:
    """The real reference model: its LM head shares the token embedding (left dense, with the reason), every
    block Linear is pruned, int8 keeps the zeros, and ``rebuild`` reloads the variant from the two configs."""
    from nnforge.compress import Int8WeightOnlyConfig, quantize_
    from nnforge.models import build
    from nnforge.recipes.runs import rebuild

    options = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16}
    torch.manual_seed(0)
    model = build("char-gpt", **options).eval()
    ids = [torch.randint(0, 84, (4, 16), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    report = prune_(model, NMConfig(criterion="wanda"), calibration=ids, forward=lambda m, b: m(b))
    assert "tied with transformer.wte" in dict(report.skipped)["lm_head"]
    assert {c.name for c in report.changed} == {n for n, m in model.named_modules()
                                                if isinstance(m, nn.Linear) and n != "lm_head"}
    q = quantize_(model, Int8WeightOnlyConfig(modules=("linear",)))
    spec = {"base": {"architecture": "char-gpt", "options": options}, "transforms": [report.config, q.config]}
    again = rebuild(spec, {k: v.contiguous() for k, v in model.state_dict().items()})
    with torch.no_grad():
        assert torch.equal(again(ids[0])[0], model(ids[0])[0])
        dense = model.transformer.h[0].mlp.c_fc.dequantize()
    assert ((dense.reshape(dense.shape[0], -1, 4) != 0).sum(-1) <= 2).all()  # int8 rounding keeps 2:4
