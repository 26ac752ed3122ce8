"""Recipe step ``prune``: any registered pruning config by name, preflight before the run starts, a saved
variant that reloads, every decision in the ledger, a report section, and prune-then-quantize in one recipe."""

from __future__ import annotations

import json

import pytest
import torch

from nnforge.cli import main
from nnforge.errors import ConfigError
from nnforge.recipes import load_recipe

RECIPE = """
name: digits-prune
seed: 0
model: {architecture: digits-mlp}
data: {dataset: digits}
steps:
  - prune:
      config: {type: unstructured, data: {sparsity: 0.5}}
      exclude: [net.6]
      latency_repeats: 4
      recovery: {batch_size: 64, optimizer_options: {lr: 0.001}, train: {max_steps: 6, eval_every: 6}}
  - quantize: {scheme: int8}
  - report
metadata: {intended_purpose: test}
"""


def _events(kind):
    from nnforge.ledger import Ledger

    with Ledger.open(".nnforge/ledger.db") as led:
        return [e for e in led.events() if e.kind == kind]


def test_prune_then_quantize_saves_reloadable_variants_and_records_every_decision(workdir, capsys):
    (workdir / "r.yaml").write_text(RECIPE, encoding="utf-8")
    assert main(["run", "r.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = out["metrics"]
    assert m["pruned-unstructured_modules_pruned"] == 2 and m["pruned-unstructured_sparsity"] == 0.5
    assert m["pruned-unstructured_flops_ratio"] == 1.0  # zeros in a dense matrix are still multiplied
    assert m["pruned-unstructured_recovery_steps"] == 6 and "pruned-unstructured_recovery_val_loss" in m
    import nnforge

    run = nnforge.load_run(out["run_dir"])
    assert {"fp32", "pruned-unstructured", "pruned-unstructured-int8"} <= set(run.variants)
    pruned, dense = run.model("pruned-unstructured"), run.model("fp32")
    assert float((pruned.net[0].weight == 0).float().mean()) == 0.5
    assert float((pruned.net[3].weight == 0).float().mean()) == 0.5
    kept = pruned.net[0].weight != 0
    assert not torch.equal(pruned.net[0].weight[kept], dense.net[0].weight[kept])  # recovery trained the kept weights
    assert (pruned.net[6].weight != 0).all()  # excluded: left dense (and trained)
    quantized = run.model("pruned-unstructured-int8")  # quantized from the pruned variant, zeros kept
    assert type(quantized.net[0]).__name__ == "QuantizedLinear"
    assert float((quantized.net[0].dequantize() == 0).float().mean()) == 0.5

    layers = _events("prune.layer")
    assert [e.data["module"] for e in layers] == ["net.0", "net.3"]
    assert all(e.data["sparsity"] == 0.5 and e.data["criterion"] == "magnitude" for e in layers)
    assert layers[0].data["shape_before"] == layers[0].data["shape_after"] == [128, 64]
    assert layers[0].data["flops_before"] == layers[0].data["flops_after"] == 2 * 16 * 64 * 128  # 16 rows, dense
    assert "executed dense" in layers[0].data["verdict"]
    (applied,) = _events("prune.applied")
    assert applied.data["nonzero_after"] == applied.data["params_before"] // 2
    assert {"module": "net.6", "reason": "left out by the step's modules/exclude patterns: not pruned"} \
        in applied.data["skipped"]
    assert applied.data["latency_b1"]["verdict"] in ("faster", "slower", "not significant")
    html = (workdir / out["run_dir"] / "report.html").read_text(encoding="utf-8")
    assert "<h2>Pruning</h2>" in html and "zeros kept in dense matrices save nothing" in html
    assert "<code>net.3</code>" in html and "data:image/png;base64," in html


@pytest.mark.parametrize(("step", "message"), [
    ("{config: {type: unstructred}}", "did you mean 'unstructured'"),
    ("{config: {type: int8}}", "not a registered prune method"),
    ("{config: {type: unstructured, data: {sparsity: 1.5}}}", "sparsity"),
])
def test_prune_step_options_are_validated_when_the_recipe_is_read(step, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("digits", [f"steps=[{{prune: {step}}}]"])


@pytest.mark.parametrize(("step", "message"), [
    ("{config: {type: unstructured}, exclude: [blocks.0]}", "pattern 'blocks.0' matches no module"),
    ("{config: {type: unstructured}, modules: ['net.1']}", "no module with a weight matrix is left"),
    ("{config: {type: nm}, base: pruned-x}", "base 'pruned-x' is not a variant an earlier prune step saves"),
    ("{config: {type: nm}}\n  - train: {train: {max_steps: 5}}", "a train step after a prune step would train"),
    ("{config: {type: gradual_prune, data: {end_step: 10}}}", "prunes while the model trains"),
    ("{config: {type: gradual_prune, data: {end_step: 10}}, recovery: {train: {max_steps: 5}}}", "end_step"),
])
def test_prune_step_preflight_refuses_before_anything_is_written(workdir, step, message):
    recipe = RECIPE.splitlines()
    recipe[6:11] = [f"  - prune: {step}"]
    (workdir / "r.yaml").write_text("\n".join(recipe), encoding="utf-8")
    assert main(["run", "r.yaml"]) == 2
    assert not (workdir / "runs").exists() and not (workdir / ".nnforge").exists()


SPARSE = """
name: digits-sparse
seed: 0
model: {architecture: digits-mlp}
data: {dataset: digits}
steps:
  - prune: {config: {type: unstructured, data: {sparsity: 0.9}}, latency_repeats: 0}
  - prune: {config: {type: sparsify, data: {batch_sizes: [1], repeats: 4}}, latency_repeats: 4}
metadata: {intended_purpose: test}
"""


def test_prune_steps_compose_and_a_sparse_layer_records_its_own_measured_verdict(workdir, capsys):
    (workdir / "r.yaml").write_text(SPARSE, encoding="utf-8")
    assert main(["run", "r.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["pruned-sparsify_file_ratio"] < 0.5  # only what is kept is stored
    import nnforge

    run = nnforge.load_run(out["run_dir"])
    dense, sparse = run.model("pruned-unstructured"), run.model("pruned-sparsify")  # rebuilt: unstructured, then sparse
    assert type(sparse.net[0]).__name__ == "SparseLinear"
    x = torch.randn(3, 64)
    torch.testing.assert_close(sparse(x), dense(x), rtol=1e-4, atol=1e-5)
    layers = [e.data for e in _events("prune.layer") if e.data["variant"] == "pruned-sparsify"]
    assert [x["module"] for x in layers] == ["net.0", "net.3", "net.6"]
    for layer in layers:
        assert abs(layer["sparsity"] - 0.9) < 1e-3 and layer["bytes_after"] < layer["bytes_before"]
        assert layer["verdict"].startswith("batch 1: ")  # the layer's own measured sparse-vs-dense verdict
    (applied,) = [e.data for e in _events("prune.applied") if e.data["variant"] == "pruned-sparsify"]
    assert applied["base"] == "pruned-unstructured"


def test_a_gradual_schedule_prunes_during_the_steps_recovery_training_and_reloads(workdir, capsys):
    recipe = RECIPE.replace("{type: unstructured, data: {sparsity: 0.5}}",
                            "{type: gradual_prune, data: {n: 2, m: 4, end_step: 6, every: 2}}")
    recipe = recipe.replace("max_steps: 6, eval_every: 6", "max_steps: 8, eval_every: 8")
    (workdir / "r.yaml").write_text(recipe, encoding="utf-8")
    assert main(["run", "r.yaml", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert m["pruned-gradual_prune_sparsity"] == 0.5 and m["pruned-gradual_prune_recovery_steps"] == 8
    import nnforge

    run = nnforge.load_run(next((workdir / "runs").iterdir()))
    pruned = run.model("pruned-gradual_prune")  # rebuilt from its spec (the gradual config, skeleton: dense shapes)
    for i in (0, 3):
        assert ((pruned.net[i].weight.reshape(pruned.net[i].out_features, -1, 4) != 0).sum(-1) == 2).all()
    assert (pruned.net[6].weight != 0).all()  # excluded
    layers = _events("prune.layer")
    assert [e.data["module"] for e in layers] == ["net.0", "net.3"] and all(e.data["sparsity"] == 0.5 for e in layers)


def test_the_report_sentence_says_when_pruning_saves_memory_but_not_time():
    from nnforge.govern._report_prune import prune_sentence

    base = {"variant": "v", "method": "m", "modules": 2, "base": "fp32", "sparsity": 0.5, "params_before": 100,
            "params_after": 100, "base_file_bytes": 2_000_000, "file_bytes": 1_000_000}
    timing = {"speedup": 0.98, "speedup_ci": [0.9, 1.05], "pruned_ms": 1.02, "base_ms": 1.0,
              "verdict": "not significant"}
    smaller = prune_sentence({**base, "bytes_before": 400, "bytes_after": 100, "latency_b1": timing})
    assert "NOT faster at batch 1" in smaller and "sparsity saves memory here, not time" in smaller
    dense = prune_sentence({**base, "bytes_before": 400, "bytes_after": 400, "latency_b1": timing})
    assert "zeros kept in dense matrices save nothing" in dense
    fast = prune_sentence({**base, "bytes_before": 400, "bytes_after": 100,
                           "latency_b1": {**timing, "speedup": 1.8, "speedup_ci": [1.6, 2.0], "verdict": "faster"}})
    assert "Measured FASTER at batch 1: 1.80×" in fast and "NOT" not in fast and "noise" not in fast
    # Masks only (same FLOPs, same bytes) yet measured faster: the sentence calls the difference what it is.
    drift = prune_sentence({**base, "bytes_before": 400, "bytes_after": 400, "flops_ratio": 1.0,
                            "latency_b1": {**timing, "speedup": 1.04, "speedup_ci": [1.01, 1.07], "verdict": "faster"}})
    assert "zeros kept in dense matrices save nothing" in drift and "this machine's noise, not pruning's" in drift
    assert "not measured" in prune_sentence({**base, "bytes_before": 1, "bytes_after": 1, "latency_b1": None})
