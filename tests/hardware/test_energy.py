"""Energy: RAPL counters read from a (fake) powercap tree with wrap-around undone; the labelled estimate otherwise;
measure_model's figures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from nnforge.errors import ConfigError
from nnforge.hardware import DEFAULT_WATTS_PER_CORE, EnergyMeter, energy_source, measure_model, state_dict_size_mb
from nnforge.hardware._energy import counter_delta_uj, rapl_domains


def _zone(root: Path, zone: str, name: str, energy: int, max_uj: int = 1_000_000) -> Path:
    d = root / zone
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d / "energy_uj"


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


def test_only_package_zones_are_summed(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "package-0", 10)
    _zone(tmp_path, "intel-rapl:0:0", "core", 5)  # part of package 0
    _zone(tmp_path, "intel-rapl:1", "package-1", 20)
    _zone(tmp_path, "intel-rapl:2", "psys", 99)  # includes the packages
    assert [d.name for d in rapl_domains(str(tmp_path))] == ["package-0", "package-1"]
    assert energy_source(rapl_root=str(tmp_path)) == "rapl"
    assert energy_source(rapl_root=str(tmp_path / "absent")) == "estimate"


def test_counter_wrap_is_undone():
    assert counter_delta_uj(100, 350, 1000) == 250
    assert counter_delta_uj(900, 50, 999) == 150  # 900 -> 999, wraps to 0, -> 50: 99 + 1 + 50


def test_rapl_meter_sums_packages_across_a_wrap(tmp_path):
    p0 = _zone(tmp_path, "intel-rapl:0", "package-0", 999_000, max_uj=1_000_000)
    p1 = _zone(tmp_path, "intel-rapl:1", "package-1", 5_000, max_uj=1_000_000)
    meter = EnergyMeter(rapl_root=str(tmp_path)).start()
    p0.write_text("500000\n")  # wrapped: 1_000 + 1 + 500_000 uJ
    meter.poll()
    p0.write_text("600000\n")  # +100_000 after the poll
    p1.write_text("2005000\n")  # +2_000_000 (below one wrap of its range, which would be lost without a poll)
    reading = meter.stop()
    assert reading.source == "rapl" and reading.watts_per_core is None
    assert reading.domains == ("package-0", "package-1")
    assert reading.joules == pytest.approx((1_001 + 500_000 + 100_000 + 2_000_000) / 1e6)


def test_unreadable_rapl_falls_back_to_the_labelled_estimate(tmp_path):
    energy = _zone(tmp_path, "intel-rapl:0", "package-0", 10)
    energy.write_text("not a number\n")  # what an unreadable counter looks like to the reader
    with EnergyMeter(rapl_root=str(tmp_path), watts_per_core=10.0) as m:
        _busy(0.05)
    r = m.reading
    assert r.source == "estimate" and r.watts_per_core == 10.0
    assert r.joules == pytest.approx(r.cpu_s * 10.0) and r.cpu_s >= 0.05
    with pytest.raises(ConfigError, match="no readable RAPL"):
        EnergyMeter(rapl_root=str(tmp_path), source="rapl")


def test_power_figure_default_override_and_checks(tmp_path, monkeypatch):
    monkeypatch.delenv("NNFORGE_WATTS_PER_CORE", raising=False)
    assert EnergyMeter(source="estimate").watts_per_core == DEFAULT_WATTS_PER_CORE
    monkeypatch.setenv("NNFORGE_WATTS_PER_CORE", "12.5")
    assert EnergyMeter(source="estimate").watts_per_core == 12.5
    assert EnergyMeter(source="estimate", watts_per_core=3).watts_per_core == 3.0  # the argument wins
    monkeypatch.setenv("NNFORGE_WATTS_PER_CORE", "lots")
    with pytest.raises(ConfigError, match="NNFORGE_WATTS_PER_CORE must be a number"):
        EnergyMeter(source="estimate")
    with pytest.raises(ConfigError, match="'watts_per_core' parameter .* Got 0"):
        EnergyMeter(source="estimate", watts_per_core=0)
    with pytest.raises(ConfigError, match="'source' parameter"):
        EnergyMeter(source="nvml")


def test_measure_model_figures():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).train()
    m = measure_model(model, torch.randn(1, 16), repeats=5, warmup=1, watts_per_core=5.0)
    assert model.training  # its mode is restored
    assert m["repeats"] == 5 and m["throughput_batch"] == 1
    assert m["throughput_per_s"] == pytest.approx(1e3 / m["latency_b1_ms"])
    n_bytes = (16 * 32 + 32 + 32 * 4 + 4) * 4
    assert n_bytes / 1e6 < m["size_mb"] < (n_bytes + 4096) / 1e6  # tensors plus the safetensors header
    assert m["energy_source"] in ("rapl", "estimate") and m["energy_j_per_inference"] >= 0
    if m["energy_source"] == "estimate":
        assert m["energy_watts_per_core"] == 5.0


def test_peak_memory_counts_weights_and_live_activations():
    # 256 -> 1024 -> ReLU -> 10 at batch 64: the linear's and the ReLU's outputs (64 x 1024 floats each) are alive
    # together; the resident-memory mark reads 0 here when the allocator reuses pages it holds
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 10))
    weights = sum(p.numel() for p in model.parameters()) * 4
    m = measure_model(model, torch.randn(64, 256), repeats=2, warmup=1)
    assert m["peak_memory_source"] == "tensors"
    acts = 2 * 64 * 1024 * 4
    assert (weights + acts) / 1e6 <= m["peak_memory_mb"] <= (weights + acts + 64 * 256 * 4 + 64 * 10 * 4 + 8192) / 1e6
    wide = nn.Sequential(nn.Linear(256, 2048), nn.ReLU(), nn.Linear(2048, 10))
    assert measure_model(wide, torch.randn(64, 256), repeats=2, warmup=1)["peak_memory_mb"] > m["peak_memory_mb"]


def test_measure_model_keyword_inputs_batch_throughput_and_artifacts(tmp_path):
    class KW(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight  # tied: stored once
            self.calls: list[int] = []

        def forward(self, input_ids, attention_mask):
            self.calls.append(input_ids.shape[0])
            return self.head(self.emb(input_ids) * attention_mask[..., None])

    model = KW()
    inputs = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3)}
    art = tmp_path / "model.bin"
    art.write_bytes(b"x" * 2_000_000)
    m = measure_model(model, inputs, repeats=4, warmup=0, throughput_batch=8, artifact_paths=[art])
    assert m["size_mb"] == 2.0 and m["throughput_batch"] == 8
    assert set(model.calls) == {1, 8}
    assert state_dict_size_mb(model) < (10 * 8 * 4 + 4096) / 1e6  # the tied matrix once, not twice
    with pytest.raises(ConfigError, match="'throughput_batch' parameter"):
        measure_model(model, inputs, throughput_batch=0)
    with pytest.raises(ConfigError, match="example_inputs must be"):
        measure_model(model, "text")


def test_energy_per_call_divides_one_metered_block(monkeypatch):
    from nnforge.hardware import energy_label, energy_method, energy_per_call

    monkeypatch.delenv("NNFORGE_WATTS_PER_CORE", raising=False)
    calls = []
    r = energy_per_call(lambda: (calls.append(1), _busy(0.01)), calls=5, watts_per_core=4.0)
    assert len(calls) == 5
    if r.source == "estimate":
        assert r.watts_per_core == 4.0 and r.joules == pytest.approx(r.cpu_s * 4.0)
        assert 0.005 < r.cpu_s < 0.05  # per call, not the block's total
        assert energy_label(r) == "estimate: CPU time x 4 W per busy core"
    assert energy_method()["label"] == energy_label(energy_method())
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="'calls' parameter of energy_per_call"):
            energy_per_call(lambda: None, calls=bad)


def test_a_long_block_is_polled_in_the_background_across_counter_wraps(tmp_path, monkeypatch):
    import nnforge.hardware._energy as energy

    counter = _zone(tmp_path, "intel-rapl:0", "package-0", 900, max_uj=1000)
    monkeypatch.setattr(energy, "POLL_S", 0.01)
    meter = EnergyMeter(rapl_root=str(tmp_path)).start()
    total = 0
    value = 900
    for _ in range(5):  # five wraps of a 1000 uJ counter: 700 uJ each, seen only through the background polls
        for _ in range(2):
            value = (value + 350) % 1001
            total += 350
            tmp = counter.with_suffix(".tmp")
            tmp.write_text(f"{value}\n")
            tmp.replace(counter)  # as sysfs: a reader never sees a half-written value
            time.sleep(0.1)
    reading = meter.stop()
    assert reading.source == "rapl" and reading.joules == pytest.approx(total / 1e6)
    assert not [t for t in __import__("threading").enumerate() if t.name == "nnforge-energy"]
