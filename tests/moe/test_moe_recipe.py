"""The train step watches an MoE model's routing: moe.alarm ledger events, the moe section and metrics, and the
report's routing section with its plot."""

from __future__ import annotations

import json
from pathlib import Path

from nnforge.cli import main


def _events(kind):
    from nnforge.ledger import Ledger

    with Ledger.open(".nnforge/ledger.db") as led:
        return [e for e in led.events() if e.kind == kind]


def test_the_builtin_moe_recipe_reports_routing_and_records_collapse_alarms(workdir, capsys):
    sets = ["model.options={n_layer: 1, n_head: 2, n_embd: 32, moe: {num_experts: 4, hidden: 32, "
            "router_options: {k: 1}, balance: none}}",
            "steps[0].train.max_steps=40", "steps[0].train.eval_every=40", "steps[0].eval_batches=2",
            "steps[0].routing_every=5", "steps[0].train.warmup_steps=4"]
    assert main(["run", "moe-charlm", "--json", *sum((["--set", s] for s in sets), [])]) == 0
    out = json.loads(capsys.readouterr().out)
    m = out["metrics"]
    # an unbalanced top-1 router at its random start sends nearly every token to one expert: alarms are raised
    assert m["moe_max_imbalance"] >= 1.0 and m["moe_alarms"] >= 1 and m["moe_alarms"] == len(_events("moe.alarm"))
    run_dir = Path(out["run_dir"])
    sections = json.loads((run_dir / "sections.json").read_text())
    history = sections["moe"]["history"]
    assert [r["step"] for r in history] == list(range(5, 41, 5)) and history[0]["layer"] == "transformer.h.0.mlp"
    html = (run_dir / "report.html").read_text()
    assert "Mixture-of-experts routing" in html and "routing over training" in html
    for alarm in _events("moe.alarm"):
        assert alarm.data["message"] in html and alarm.run == out["run_id"]


def test_genre_routing_and_fine_tuning_drift_reach_the_section_the_ledger_and_the_report(workdir, capsys):
    tiny = ["model.options={n_layer: 1, n_head: 2, n_embd: 32, moe: {num_experts: 4, hidden: 32, "
            "router_options: {k: 2}, balance: aux-free}}"]
    for i, steps in ((0, 30), (1, 20)):
        tiny += [f"steps[{i}].train.max_steps={steps}", f"steps[{i}].train.eval_every={steps}",
                 f"steps[{i}].eval_batches=2", f"steps[{i}].routing_batches=2", f"steps[{i}].train.warmup_steps=2"]
    assert main(["run", "moe-charlm-genre", "--json", *sum((["--set", s] for s in tiny), [])]) == 0
    out = json.loads(capsys.readouterr().out)
    run_dir = Path(out["run_dir"])
    moe = json.loads((run_dir / "sections.json").read_text())["moe"]
    assert moe["trained_on"] == ["tragedy"] and set(moe["by_group"]["load"]) == {"comedy", "tragedy", "history",
                                                                                  "poems"}
    assert set(moe["by_group_before"]["load"]) == set(moe["by_group"]["load"])  # the first step's measurement
    load = moe["by_group"]["load"]["tragedy"]["transformer.h.0.mlp"]
    assert len(load) == 4 and abs(sum(load) - 1) < 1e-5
    (drift,) = moe["drift"]
    assert 0.0 <= drift["load_shift"] <= 1.0 and 0.0 <= drift["top1_agreement"] <= 1.0
    (event,) = _events("moe.drift")  # only the fine-tuning step had a trained model to compare against
    assert event.data["layers"][0]["top1_agreement"] == drift["top1_agreement"] and event.run == out["run_id"]
    assert out["metrics"]["moe_min_top1_agreement"] == drift["top1_agreement"]
    html = (run_dir / "report.html").read_text()
    assert "Experts serving each document group" in html and "Routing drift during train" in html
    assert "the document groups tragedy only" in html


def test_freeze_router_keeps_gates_and_selection_bias_and_needs_an_moe_model(workdir, capsys):
    import torch

    from nnforge.data import load
    from nnforge.moe import MoE, freeze_routers_
    from nnforge.moe.gpt import MoEGPT, MoEGPTConfig

    torch.manual_seed(0)
    model = MoEGPT(MoEGPTConfig(n_layer=1, n_head=2, n_embd=32, moe={"num_experts": 4, "hidden": 16,
                                                                     "balance": "aux-free"}))
    assert freeze_routers_(model) == ["transformer.h.0.mlp"]
    layer = model.get_submodule("transformer.h.0.mlp")
    assert isinstance(layer, MoE)
    gate, bias = layer.router.gate.weight.detach().clone(), layer.router.bias.clone()
    expert = layer.experts.expert(0).c_fc.weight.detach().clone()
    corpus = load("shakespeare-char")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        x, y = corpus.batch("train", 4, 16, torch.Generator().manual_seed(step))
        model(x, y)[1].backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(layer.router.gate.weight, gate) and torch.equal(layer.router.bias, bias)
    assert not torch.equal(layer.experts.expert(0).c_fc.weight, expert)  # the experts still train
    sets = ["model.architecture=char-gpt", "model.options={n_layer: 1, n_head: 2, n_embd: 32}",
            "steps[0].freeze_router=true"]
    assert main(["run", "moe-charlm", *sum((["--set", s] for s in sets), [])]) == 2
    assert "freeze_router needs a model with MoE layers" in capsys.readouterr().err
