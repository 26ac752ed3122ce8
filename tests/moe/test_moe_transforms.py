"""Upcycling and expert removal as registered transforms: recipe steps, saved variants that rebuild, ledger events;
removing experts that received nothing changes no output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nnforge.cli import main
from nnforge.compress import prune_
from nnforge.errors import ConfigError
from nnforge.moe import ExpertPruneConfig, MoE, MoEConfig


def _events(kind):
    from nnforge.ledger import Ledger

    with Ledger.open(".nnforge/ledger.db") as led:
        return [e for e in led.events() if e.kind == kind]


class _Wrap(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mlp = MoE(8, MoEConfig(num_experts=4, hidden=6, router_options={"k": 2}, balance="none"))

    def forward(self, x):
        return self.mlp(x)


def test_removing_experts_that_got_nothing_changes_no_output_and_records_what_was_kept():
    model = _Wrap().double().eval()
    model.mlp.router.bias[3] = -10.0  # expert 3 is never chosen
    x = torch.randn(40, 8, dtype=torch.float64)
    before = model(x)
    report = prune_(model, ExpertPruneConfig(min_load=0.0), calibration=[x])
    assert report.config["data"]["kept"] == {"mlp": [0, 1, 2]} and model.mlp.config.num_experts == 3
    assert model.mlp.router.gate.weight.shape == (3, 8) and len(model.mlp.experts) == 3
    torch.testing.assert_close(model(x), before)
    removed = {c.name: c.detail for c in report.changed}
    assert set(removed) == {"mlp.router.gate", "mlp.experts.3.c_fc", "mlp.experts.3.c_proj"}
    assert "0.0% of the calibration assignments" in removed["mlp.experts.3.c_fc"]


def test_keep_fraction_never_goes_below_k_and_bad_input_says_what_to_fix():
    model = _Wrap()
    x = torch.randn(64, 8)
    report = prune_(model, ExpertPruneConfig(keep=0.25), calibration=[x])  # 1 of 4, but top-2 needs 2
    assert len(report.config["data"]["kept"]["mlp"]) == 2 and model.mlp.config.num_experts == 2
    with pytest.raises(ValueError, match="not both"):
        ExpertPruneConfig(keep=0.5, min_load=0.1)
    with pytest.raises(ConfigError, match="needs calibration data"):
        prune_(_Wrap(), ExpertPruneConfig(keep=0.5))
    with pytest.raises(ConfigError, match="no MoE layer"):
        prune_(torch.nn.Linear(2, 2), ExpertPruneConfig(keep=0.5), calibration=[torch.randn(1, 2)])


def _tiny(prefix_steps):
    sets = []
    for i in prefix_steps:
        sets += [f"steps[{i}].train.max_steps=6", f"steps[{i}].train.eval_every=6", f"steps[{i}].eval_batches=2",
                 f"steps[{i}].train.warmup_steps=1", f"steps[{i}].routing_batches=1"]
    return sets


def test_upcycle_recipe_trains_the_upcycled_model_and_every_variant_rebuilds(workdir, capsys):
    from nnforge.recipes.runs import load_run

    sets = ["model.options={n_layer: 1, n_head: 2, n_embd: 32}", *_tiny([0, 2]),
            "steps[1].moe={num_experts: 4, router_options: {k: 2}, balance: aux-free}"]
    assert main(["run", "moe-upcycle-charlm", "--json", *sum((["--set", s] for s in sets), [])]) == 0
    out = json.loads(capsys.readouterr().out)
    (event,) = _events("moe.upcycled")
    assert event.data["layers"] == ["transformer.h.0.mlp"] and event.data["experts"] == 4
    run = load_run(out["run_dir"])
    for variant in ("upcycled", "fp32"):  # fp32: the upcycled model after its training
        model = run.model(variant)
        assert isinstance(model.get_submodule("transformer.h.0.mlp"), MoE)
    sections = json.loads((Path(out["run_dir"]) / "sections.json").read_text())
    assert sections["moe"]["drift"] and sections["upcycle"]["variant"] == "upcycled"
    assert "Upcycled from the dense model" in (Path(out["run_dir"]) / "report.html").read_text()
    # the CLI reads the routing of the finished run by genre, and the drift from the upcycled start
    assert main(["moe", "routing", out["run_dir"], "--before", "upcycled", "--batches", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["variant"] == "fp32" and set(doc["by_group"]["serving"]) == {"comedy", "tragedy", "history", "poems"}
    assert doc["drift"][0]["layer"] == "transformer.h.0.mlp" and 0 <= doc["drift"][0]["load_shift"] <= 1
    assert main(["moe", "routing", out["run_dir"], "--variant", "nope"]) == 2
    assert main(["run", "moe-upcycle-charlm", "--set", "model.architecture=moe-gpt"]) == 2
    assert "already has MoE layers" in capsys.readouterr().err


def test_prune_command_removes_experts_of_a_finished_run_by_usage_and_the_variant_rebuilds(workdir, capsys):
    from nnforge.recipes.runs import load_run

    sets = ["model.options={n_layer: 1, n_head: 2, n_embd: 32, moe: {num_experts: 4, hidden: 16, "
            "router_options: {k: 2}}}", *_tiny([0])]
    assert main(["run", "moe-charlm", "--json", *sum((["--set", s] for s in sets), [])]) == 0
    run_dir = json.loads(capsys.readouterr().out)["run_dir"]
    assert main(["prune", run_dir, "--method", "experts", "-o", "keep=0.5", "--calibration-batches", "2",
                 "--latency-repeats", "2", "--variant", "fewer-experts"]) == 0
    layer = load_run(run_dir).model("fewer-experts").get_submodule("transformer.h.0.mlp")
    assert isinstance(layer, MoE) and layer.config.num_experts == 2 and len(layer.experts) == 2
    assert main(["prune", run_dir, "--method", "experts", "-o", "keep=0.5", "-o", "min_load=0.1"]) == 2
    assert "not both" in capsys.readouterr().err
