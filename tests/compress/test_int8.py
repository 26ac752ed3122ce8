from __future__ import annotations

import torch
from torch import nn

from nnforge.compress import Int8Embedding, Int8Linear, Int8WeightOnlyConfig, quantize_
from nnforge.models.checkpoint import load_weights, save_weights


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.norm = nn.LayerNorm(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 4, bias=False)
        self.conv = nn.Conv1d(4, 4, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.norm(self.emb(ids))))).mean(1)


def test_int8_replaces_linear_and_embedding_and_lists_the_rest():
    torch.manual_seed(0)
    model = Tiny()
    ids = torch.randint(0, 50, (3, 7))
    ref = model(ids)
    report = quantize_(model, Int8WeightOnlyConfig())
    assert isinstance(model.fc1, Int8Linear) and isinstance(model.emb, Int8Embedding)
    assert model.fc1.qweight.dtype == torch.int8
    assert {c.name for c in report.changed} == {"emb", "fc1", "fc2"}
    skipped = dict(report.skipped)
    assert "normalisation" in skipped["norm"] and "Conv1d" in skipped["conv"]
    assert report.bytes_after < 0.3 * report.bytes_before
    assert max(c.error for c in report.changed) < 0.01
    out = model(ids)
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999


def test_filter_and_linear_only():
    model = Tiny()
    report = quantize_(model, Int8WeightOnlyConfig(modules=("linear",)), filter=lambda n, m: n != "fc2")
    assert isinstance(model.fc1, Int8Linear) and isinstance(model.fc2, nn.Linear) and isinstance(model.emb, nn.Embedding)
    assert [c.name for c in report.changed] == ["fc1"]


def test_int8_safetensors_round_trip_is_bit_exact(tmp_path):
    model = Tiny()
    quantize_(model, Int8WeightOnlyConfig())
    save_weights(model, tmp_path / "m.safetensors", {"note": "x"})
    tensors, spec = load_weights(tmp_path / "m.safetensors")
    assert spec == {"note": "x"}
    assert tensors["fc1.qweight"].dtype == torch.int8
    assert torch.equal(tensors["fc1.qweight"], model.fc1.qweight) and torch.equal(tensors["emb.scale"], model.emb.scale)
    fresh = Tiny()
    quantize_(fresh, Int8WeightOnlyConfig())
    fresh.load_state_dict(tensors)
    ids = torch.randint(0, 50, (2, 5))
    assert torch.equal(fresh(ids), model(ids))
