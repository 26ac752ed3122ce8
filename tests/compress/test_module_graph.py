"""How the transforms walk a model: a module reused under two names, children whose parent reads their weight
directly (nn.MultiheadAttention's out_proj), and a bare layer given as the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnforge.compress import QuantizedLinear, W8A8Config, WeightOnlyConfig, apply_, quantize_
from nnforge.compress.quantize.qat import QATConfig, convert_qat_, prepare_qat_
from nnforge.errors import ConfigError

CONFIGS = [WeightOnlyConfig(fmt="int4", group_size=32), W8A8Config(smoothing="none")]


class Shared(nn.Module):
    """One Linear registered as ``a`` and ``b`` (weight sharing by module reuse)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = self.a
        self.head = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(torch.relu(self.a(x))))


@pytest.mark.parametrize("cfg", CONFIGS, ids=["int4", "w8a8"])
def test_a_module_reused_under_two_names_is_quantized_under_both(cfg):
    torch.manual_seed(0)
    m = Shared()
    rep = quantize_(m, cfg)
    assert isinstance(m.a, QuantizedLinear) and m.b is m.a  # b kept the float Linear before
    a = next(c for c in rep.changed if c.name == "a")
    assert a.aliases == ["b"] and "also registered as b" in a.detail
    assert sorted(c.name for c in rep.changed) == ["a", "head"]  # counted once: its bytes are saved once
    assert rep.to_dict()["changed"][0]["aliases"] == ["b"]
    # a skeleton of the same model loads the saved state (both names are in it)
    fresh = Shared()
    apply_(fresh, cfg, skeleton=True)
    fresh.load_state_dict(m.state_dict())
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), m(x))


def test_a_filter_that_admits_one_name_of_a_shared_module_only_skips_it():
    m = Shared()
    rep = quantize_(m, WeightOnlyConfig(fmt="int4", group_size=32), filter=lambda name, _: name != "b")
    assert type(m.a) is nn.Linear and m.b is m.a
    assert any(n == "a" and "also registered as b" in why for n, why in rep.skipped)


def test_qat_on_a_shared_module_converts_to_what_it_trained():
    torch.manual_seed(0)
    m = Shared().eval()
    cfg = QATConfig(fmt="ternary", activations=8)
    rep = prepare_qat_(m, cfg)
    assert rep.changed[0].aliases == ["b"]
    x = torch.randn(100, 64)  # > 64 rows: the dequantizing path, so only the weights matter
    with torch.no_grad():
        fake = m(x)
    convert_qat_(m, cfg)
    assert isinstance(m.b, QuantizedLinear) and m.b is m.a
    with torch.no_grad():
        torch.testing.assert_close(m(x), fake, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["int4", "w8a8"])
def test_children_read_directly_by_their_parent_are_skipped_with_the_reason(cfg):
    torch.manual_seed(0)
    m = nn.Sequential(nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True),
                      nn.MultiheadAttention(64, 4, batch_first=True)).eval()
    rep = quantize_(m, cfg)
    skipped = dict(rep.skipped)
    assert "never calls out_proj" in skipped["0.self_attn.out_proj"]
    assert "reads linear1.weight directly" in skipped["0.linear1"]  # its fast path reads the weight
    assert "never calls out_proj" in skipped["1.out_proj"]
    assert rep.changed == []
    with torch.no_grad():  # the forward used to fail: 'QuantizedLinear' object has no attribute 'weight'
        m[0](torch.randn(2, 5, 64))
        m[1](*[torch.randn(2, 5, 64)] * 3)


def test_qat_skips_multihead_attention_out_proj():
    m = nn.Sequential(nn.MultiheadAttention(64, 4, batch_first=True), nn.Linear(64, 8))
    rep = prepare_qat_(m, QATConfig())
    assert [c.name for c in rep.changed] == ["1"]
    assert "never calls out_proj" in dict(rep.skipped)["0.out_proj"]
    convert_qat_(m, QATConfig())
    assert type(m[0].out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        m[0](x, x, x)


@pytest.mark.parametrize("layer", [nn.Linear(64, 32), nn.Embedding(10, 64), nn.Conv2d(3, 4, 3)],
                         ids=["linear", "embedding", "conv"])
def test_a_bare_layer_as_the_model_is_refused(layer):
    cfg = WeightOnlyConfig(fmt="int4", group_size=32, modules=("linear", "conv", "embedding"))
    with pytest.raises(ConfigError, match=r"root module cannot be replaced in place.*nn.Sequential"):
        quantize_(layer, cfg)
    if isinstance(layer, nn.Linear):
        with pytest.raises(ConfigError, match="root module"):
            quantize_(layer, W8A8Config(smoothing="none"))
        with pytest.raises(ConfigError, match="root module"):
            prepare_qat_(layer, QATConfig())
    wrapped = nn.Sequential(layer)
    assert len(quantize_(wrapped, cfg).changed) == 1
