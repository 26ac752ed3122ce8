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
