"""A real finished run behind the server (the session's small quickstart run): the backends it can run are
measured and the fastest kept, its OOD guard is re-thresholded on the served variant, its answers are the run's
own predictions, and the report gets a serving section from the ledger."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow


def test_a_served_run_answers_as_the_run_predicts_and_reports_it(small_run_copy, monkeypatch):
    from fastapi.testclient import TestClient

    from nnforge.cli import main
    from nnforge.deploy.serve import ServeConfig, create_app
    from nnforge.errors import ConfigError
    from nnforge.govern.users import UserStore
    from nnforge.ledger import Ledger
    from nnforge.recipes import load_run
    from nnforge.recipes.serve_run import sample_inputs, serve_run

    monkeypatch.setenv("NNFORGE_SCRYPT_N", "2")
    work, run_dir = small_run_copy
    loc = str(work / ".nnforge" / "ledger.db")
    store = UserStore.for_ledger(loc)
    with Ledger.open(loc) as led:
        admin = store.authenticate(store.add("root", "admin", by=None, ledger=led)[1])
        caller = store.add("app", "caller", by=admin, ledger=led)[1]
        reviewer = store.add("ana", "reviewer", by=admin, ledger=led)[1]

    with pytest.raises(ConfigError, match=r"metadata: \{record_inputs: true\}"):  # the recipe does not allow it
        serve_run(run_dir.name, ServeConfig(record_inputs=True), variant="int8", backend="torch")
    service = serve_run(run_dir.name, ServeConfig(max_batch=8, min_confidence=0.0), variant="int8",
                        backend="auto")
    timings = service.facts["backends_ms"]
    assert {"torch", "native", "onnx"} <= set(timings), timings
    measured = {k: v for k, v in timings.items() if "skipped" not in v}
    assert service.backend.name == min(measured, key=lambda k: measured[k]["batch_8"])
    assert service.guard is not None and service.facts["ood_guard"]["threshold_served"] > 0

    r = load_run(run_dir.name)
    texts = sample_inputs(r, "test", n=12)[0]
    want = [row["label"] for row in r.predict(texts, "int8", record=False)]
    with TestClient(create_app(service, store)) as client:
        got = client.post("/predict", json={"inputs": texts}, headers={"Authorization": f"Bearer {caller}"}).json()
        ood = client.post("/predict", json={"inputs": ["def main(argv):\n    return subprocess.call(argv)"]},
                          headers={"Authorization": f"Bearer {caller}"}).json()["predictions"][0]
        why = client.post("/explain", json={"inputs": texts[:2], "method": "integrated_gradients"},
                          headers={"Authorization": f"Bearer {caller}"})
        assert client.post("/explain", json={"inputs": texts[:1]}).status_code == 401  # explanations need a token
        client.post("/control/halt", json={"reason": "audit"}, headers={"Authorization": f"Bearer {reviewer}"})
        assert client.post("/explain", json={"inputs": texts[:1]},
                           headers={"Authorization": f"Bearer {caller}"}).status_code == 503  # halted: nothing
    assert why.status_code == 200, why.text
    explained = why.json()["explanations"]
    assert [e["target_label"] for e in explained] == want[:2]  # the served variant's own answers, explained
    assert all(e["extras"]["completeness_error"] <= 0.01 and e["top_positive"] for e in explained)
    with Ledger.open(loc) as led:
        recorded = [e for e in led.events() if e.kind == "model.explained" and e.data.get("source") == "serve"]
    assert len(recorded) == 2 and recorded[0].data["user"]["name"] == "app"
    answered = [p for p in got["predictions"] if p["status"] != "review"]
    assert answered, got
    # the int8 variant's own labels, whatever backend serves it (the native and ONNX runtimes round activations
    # a little differently: at most one in twelve may differ)
    agree = sum(p["label"] == w for p, w in zip(got["predictions"], want, strict=True) if p["status"] != "review")
    assert agree >= len(answered) - 1, (got, want)
    assert ood["status"] == "review" and ood["reasons"] == ["ood"]

    assert main(["report", run_dir.name]) == 0
    html = (run_dir / "report.html").read_text()
    assert "<h2>Serving</h2>" in html and "audit" in html and "halted" in html


def test_a_cascade_of_the_runs_variants_is_evaluated_from_the_cli(small_run_copy):
    """``nnforge cascade``: the run's int8 variant, then its fp32 one, then a (simulated) person; thresholds chosen
    on the validation split, shares, caps and accuracies on test, the event in the ledger; bad configs exit 2."""
    import json

    from nnforge.cli import main
    from nnforge.ledger import Ledger

    work, run_dir = small_run_copy
    cfg = work / "cascade.yaml"
    cfg.write_text(f"""tiers:
  - {{name: small, kind: run, options: {{run: {run_dir.name}, variant: int8}}}}
  - {{name: large, kind: run, max_share: 0.5, options: {{run: {run_dir.name}, variant: fp32, ood: false}}}}
  - {{name: person, kind: human, max_share: 0.1}}
""")
    assert main(["cascade", str(cfg), "--limit", "30", "--out", "cascade.json"]) == 0
    doc = json.loads((work / "cascade.json").read_text())
    assert doc["data"] == {"run": run_dir.name, "split": "test", "inputs": 30}
    tiers = {t["name"]: t for t in doc["result"]["tiers"]}
    assert abs(sum(t["share"] for t in tiers.values()) - 1) < 1e-9
    assert tiers["large"]["reached_share"] <= 0.5 + 1e-9 and tiers["person"]["reached_share"] <= 0.1 + 1e-9
    assert tiers["person"]["accuracy"] in (None, 1.0)  # the simulated person is always right
    assert set(doc["alone"]) == {"small", "large"} and all(0 <= a <= 1 for a in doc["alone"].values())
    assert doc["choice"]["split"] == "val" and set(doc["choice"]["thresholds"]) == {"small", "large"}
    assert doc["tiers"]["small"]["variant"] == "int8" and doc["tiers"]["small"]["ood_guard"]["threshold_served"] > 0
    assert doc["tiers"]["large"]["ood_guard"] == "off"
    with Ledger.open(str(work / ".nnforge" / "ledger.db")) as led:
        events = [e for e in led.events() if e.kind == "cascade.evaluated"]
    assert len(events) == 1 and events[0].data["accuracy"] == doc["result"]["accuracy"]
    assert main(["report", run_dir.name]) == 0
    html = (run_dir / "report.html").read_text()
    assert "<h2>Cascades</h2>" in html and "small ≥" in html and "person" in html

    bad = work / "bad.yaml"
    bad.write_text(f"tiers:\n  - {{name: p, kind: human}}\n  - {{name: s, kind: run, options: {{run: {run_dir.name}}}}}\n")
    assert main(["cascade", str(bad)]) == 2  # a person below a model
    bad.write_text("tiers:\n  - {name: s, kind: rn, options: {run: x}}\n  - {name: p, kind: human}\n")
    assert main(["cascade", str(bad)]) == 2  # an unknown tier kind
    assert main(["cascade", str(work / "missing.yaml")]) == 2
    assert not (work / "missing.json").exists()
