"""``nnforge prune RUN|RECIPE``: a finished run gains a pruned variant (recorded, reloadable, in its report); a
recipe runs with a prune step; bad input exits 2 and writes nothing."""

from __future__ import annotations

import json

import pytest
import torch

from nnforge.cli import main

RECIPE = """
name: digits-small
seed: 0
model: {architecture: digits-mlp}
data: {dataset: digits}
steps:
  - train: {batch_size: 64, train: {max_steps: 5, eval_every: 5}}
  - report
metadata: {intended_purpose: test}
"""


@pytest.fixture(scope="module")
def _one_run(tmp_path_factory):
    import os

    folder = tmp_path_factory.mktemp("prune-cli")
    (folder / "r.yaml").write_text(RECIPE, encoding="utf-8")
    old = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["run", "r.yaml"]) == 0
    finally:
        os.chdir(old)
    return folder, next((folder / "runs").iterdir())


@pytest.fixture
def finished_run(_one_run, tmp_path, monkeypatch):
    """A copy of one small finished run (runs/ and .nnforge/), in the working folder: tests may add to it."""
    import shutil

    folder, run_dir = _one_run
    shutil.copytree(folder, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "work" / "runs" / run_dir.name


@pytest.fixture
def untouched_run(_one_run, monkeypatch):
    """The shared finished run itself, for tests that must not change it."""
    monkeypatch.chdir(_one_run[0])
    return _one_run[1]


def _snapshot(folder):
    from nnforge.ledger import Ledger

    files = {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    with Ledger.open(folder.parent.parent / ".nnforge" / "ledger.db") as led:
        return files, [e.hash for e in led.events()]


def test_prune_a_finished_run_adds_a_recorded_reloadable_variant(finished_run, capsys):
    assert main(["prune", str(finished_run), "--method", "nm", "-o", "n=2", "-o", "m=4", "--latency-repeats", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["variant"] == "pruned-nm" and out["base"] == "fp32"
    assert out["metrics"]["pruned-nm_sparsity"] == 0.5
    import nnforge

    run = nnforge.load_run(finished_run)  # the new file is the bytes the ledger recorded
    assert set(run.variants) == {"fp32", "pruned-nm"} and run.config["final_variant"] == "fp32"
    w = run.model("pruned-nm").net[0].weight
    assert ((w.reshape(-1, 4) == 0).sum(dim=1) == 2).all()  # 2 of every 4 consecutive inputs kept
    assert torch.equal(run.model("fp32").net[0].weight != 0, torch.ones_like(w, dtype=torch.bool))
    from nnforge.ledger import Ledger

    with Ledger.open(".nnforge/ledger.db") as led:
        kinds = [e.kind for e in led.run_events(run.run_id)]
    assert kinds.count("prune.layer") == 3 and kinds.count("prune.applied") == 1
    assert "<h2>Pruning</h2>" in (finished_run / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("argv", [
    ["--method", "nmm"],  # not a registered pruning method
    ["-o", "sparsity=2"],
    ["--variant", "fp32"],  # the run has that variant already
    ["--base", "int8"],  # the run has no such variant
    ["--exclude", "blocks.*"],  # matches no module
    ["--set", "seed=1"],  # --set changes recipes, not runs
])
def test_bad_input_on_a_run_exits_2_and_writes_nothing(untouched_run, argv):
    before = _snapshot(untouched_run)
    assert main(["prune", str(untouched_run), *argv]) == 2
    assert _snapshot(untouched_run) == before


def test_prune_a_recipe_inserts_the_step_after_training(workdir, capsys):
    (workdir / "r.yaml").write_text(RECIPE, encoding="utf-8")
    assert main(["prune", "r.yaml", "--method", "structured", "-o", "ffn=0.5", "--latency-repeats", "2",
                 "--recovery-steps", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    config = json.loads((workdir / out["run_dir"] / "config.json").read_text())
    assert [s["name"] for s in config["recipe"]["steps"]] == ["train", "prune", "report"]
    m = out["metrics"]
    assert m["pruned-structured_params_ratio"] < 0.75 and m["pruned-structured_flops_ratio"] < 0.75
    assert m["pruned-structured_recovery_steps"] == 3  # the pruned model trained at its new shapes
    import nnforge

    pruned = nnforge.load_run(out["run_dir"]).model("pruned-structured")  # smaller matrices, no mask
    assert pruned.net[0].weight.shape[0] < 128


def test_a_recipe_with_its_own_prune_step_refuses_prune_options(workdir):
    (workdir / "r.yaml").write_text(RECIPE.replace("  - report", "  - prune: {config: {type: nm}}\n  - report"),
                                    encoding="utf-8")
    assert main(["prune", "r.yaml", "--method", "unstructured"]) == 2
    assert main(["prune", "no-such-recipe"]) == 2
    assert not (workdir / "runs").exists() and not (workdir / ".nnforge").exists()
