"""Compression-plan search: the space per module, a plan applied as quantize_ would, and a study that finds the
most faithful plan under a size constraint (checked against every plan measured directly)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from nnforge.compress import WeightOnlyConfig, quantize_
from nnforge.compress.quantize import QuantizedEmbedding, QuantizedLinear
from nnforge.errors import ConfigError
from nnforge.search import Objective
from nnforge.search.plan import (
    PlanQuantizer,
    PlanSearchConfig,
    apply_plan,
    measure_plan,
    parse_choice,
    plan_from_params,
    plan_search,
    plan_space,
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(64, 32)
        self.up = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32)
        self.norm = nn.LayerNorm(32)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        return self.norm(h + self.down(torch.relu(self.up(h))))


def _model() -> Tiny:
    torch.manual_seed(0)
    return Tiny().eval()


IDS = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
RTN = WeightOnlyConfig(fmt="int4", group_size=32, symmetric=False, calibrator="rtn", embedding_fmt="int4",
                       embedding_group_size=32, embedding_symmetric=False)


def _cos(ref: torch.Tensor):
    def fidelity(model: nn.Module) -> dict[str, float]:
        with torch.inference_mode():
            out = model(IDS)
        return {"cos_mean": float(torch.nn.functional.cosine_similarity(out, ref, dim=-1).mean())}
    return fidelity


def test_space_has_one_parameter_per_module():
    config = PlanSearchConfig(formats=["fp32", "int8/row", "int4/g32", "int4"], embedding_formats=["int8", "int4/g64"],
                              quantize=RTN)
    space = plan_space(_model(), config)
    assert sorted(space) == ["plan:down", "plan:emb", "plan:up"]
    assert space["plan:up"].choices == ["fp32", "int8/row", "int4/g32", "int4"]
    assert space["plan:emb"].choices == ["int8", "int4/g64"]
    assert plan_from_params({"plan:up": "int4/g32", "plan:emb": "int8", "other": 1}) == {"up": "int4/g32", "emb": "int8"}
    assert parse_choice("int4/g128") == ("int4", 128) and parse_choice("int8/row") == ("int8", None)
    assert parse_choice("int4") == ("int4", "default")
    with pytest.raises(ConfigError, match="not Linear/Embedding modules"):
        plan_space(_model(), PlanSearchConfig(modules=["norm"], quantize=RTN))
    with pytest.raises(ConfigError, match="lists a format twice"):
        PlanSearchConfig(formats=["int4", "int4"])
    with pytest.raises(ConfigError, match="group suffix"):
        PlanSearchConfig(formats=["int4/g48"])


def test_a_plan_gives_each_layer_its_own_group_size(one_torch_thread):
    got = apply_plan(_model(), {"emb": "int4/row", "up": "int8/row", "down": "int4/g64"},
                     PlanSearchConfig(quantize=RTN))  # RTN's own group sizes are 32 for both kinds
    assert (got.up.fmt, got.up.group_size) == ("int8", None)
    assert (got.down.fmt, got.down.group_size) == ("int4", 64)
    assert (got.emb.fmt, got.emb.group_size) == ("int4", None)


def test_apply_plan_matches_quantize_with_the_same_plan(one_torch_thread):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = {"emb": "int8", "up": "int4", "down": "fp32"}
    got = apply_plan(model, plan, PlanSearchConfig(quantize=RTN))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    assert isinstance(got.emb, QuantizedEmbedding) and isinstance(got.up, QuantizedLinear)
    assert type(got.down) is nn.Linear and torch.equal(got.down.weight, model.down.weight)
    ref = _model()
    quantize_(ref, RTN.model_copy(update={"plan": plan}))
    assert torch.equal(got(IDS), ref(IDS))
    gptq = RTN.model_copy(update={"calibrator": "gptq", "act_order": True})  # statistics from the float model
    got = apply_plan(model, {"up": "int4", "down": "int8"}, PlanSearchConfig(quantize=gptq), calibration=[IDS])
    ref = _model()
    quantize_(ref, WeightOnlyConfig(**{**gptq.model_dump(), "plan": {"up": "int4", "down": "int8"}}),
              lambda name, _: name in ("up", "down"), calibration=[IDS])
    assert torch.equal(got(IDS), ref(IDS))


def test_study_finds_the_most_faithful_plan_under_the_size_constraint(tmp_path, one_torch_thread):
    model = _model()
    with torch.inference_mode():
        fidelity = _cos(model(IDS))
    base = PlanSearchConfig(formats=["int8", "int4"], embedding_formats=["int8", "int4"], quantize=RTN)
    quantizer = PlanQuantizer(model, base)
    measured = {}  # every plan, measured directly
    for fmts in itertools.product(["int8", "int4"], repeat=3):
        plan = dict(zip(["emb", "up", "down"], fmts, strict=True))
        metrics, _ = measure_plan(quantizer, plan, IDS[:1], fidelity, measure={"repeats": 1, "warmup": 0})
        measured[fmts] = metrics
    sizes = sorted({round(m["size_mb"], 6) for m in measured.values()})
    limit = sizes[len(sizes) // 2]  # about half the plans fit
    feasible = {k: m for k, m in measured.items() if m["size_mb"] <= limit}
    optimum = max(feasible, key=lambda k: feasible[k]["cos_mean"])
    config = PlanSearchConfig(formats=["int8", "int4"], embedding_formats=["int8", "int4"], quantize=RTN,
                              objectives=[Objective(metric="cos_mean", direction="maximize")],
                              constraints=[f"size_mb <= {limit}"], sampler="random", trials=12, seed=0)
    result = plan_search(model, IDS[:1], fidelity, config, storage=tmp_path / "plans.journal",
                         measure={"repeats": 1, "warmup": 0})
    assert len(result.trials) == 12 and all(t.state == "complete" for t in result.trials)
    for t in result.trials:  # each trial's figures are those of its plan measured directly
        plan = plan_from_params(t.params)
        key = (plan["emb"], plan["up"], plan["down"])
        assert t.metrics["size_mb"] == pytest.approx(measured[key]["size_mb"])
        assert t.metrics["cos_mean"] == pytest.approx(measured[key]["cos_mean"], abs=1e-6)
        assert t.feasible == (measured[key]["size_mb"] <= limit)
        assert t.attrs["energy_source"] in ("rapl", "estimate")
    best = result.best_trial
    assert best is not None
    plan = plan_from_params(best.params)
    assert (plan["emb"], plan["up"], plan["down"]) == optimum
