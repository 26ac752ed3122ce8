"""``nnforge federate RECIPE`` and the ``federate`` step: a recipe's model and train step become a federated job;
every round is in the ledger, the report has its section, the model reloads; bad input exits 2 with nothing
written."""

from __future__ import annotations

import json

import pytest

from nnforge.cli import main

pytestmark = pytest.mark.slow


def _events(kind):
    from nnforge.ledger import Ledger

    with Ledger.open(".nnforge/ledger.db") as led:
        return [e for e in led.events() if e.kind == kind]


def test_federate_turns_the_digits_recipe_into_a_recorded_federated_run(workdir, capsys):
    code = main(["federate", "digits", "--clients", "3", "--rounds", "2", "--partition", "dirichlet", "-p", "alpha=1",
                 "--secure-aggregation", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    m = out["metrics"]
    assert m["federated_rounds"] == 2 and m["federated_clients"] == 3 and 0 <= m["val_accuracy"] <= 1
    # model down (156 kB) and encrypted update up (5 ciphertexts of 128 KiB) for each of 3 clients
    assert 3 * (156_000 + 5 * 131_000) < m["federated_bytes_per_round"] < 3 * (160_000 + 5 * 135_000)
    (started,) = _events("federated.started")
    cfg = started.data["config"]["data"]
    # the recipe's train step gave the clients its optimizer (adamw, lr 0.003) and batch size
    assert cfg["local"]["optimizer"] == "adamw" and cfg["local"]["optimizer_options"]["lr"] == 0.003
    assert cfg["local"]["batch_size"] == 64 and cfg["partition"] == "dirichlet" and cfg["secure"]["method"] == "he"
    rounds = _events("federated.round")
    assert [e.data["round"] for e in rounds] == [1, 2]
    assert all(len(e.data["clients"]) == 3 and e.data["replied"] == 3 for e in rounds)
    assert all(c["examples"] > 0 and c["error"] is None for c in rounds[-1].data["clients"])
    assert all(e.data["secure"]["summed"] == 3 and e.data["secure"]["ciphertexts"] == 5 for e in rounds)
    (finished,) = _events("federated.finished")
    assert finished.data["rounds"] == 2 and sum(p["examples"] for p in finished.data["partition"]) == 1437
    import nnforge

    run = nnforge.load_run(out["run_dir"])
    assert "fp32" in run.variants and run.model("fp32") is not None
    html = (workdir / out["run_dir"] / "report.html").read_text(encoding="utf-8")
    assert "Secure aggregation by homomorphic encryption" in html and "5 ciphertexts each a round" in html
    assert "<h2>Federated learning</h2>" in html and "data split <code>dirichlet</code> (alpha 1)" in html
    assert "per client" in html and "max anomaly score" in html


def test_the_builtin_federated_recipe_passes_every_preflight():
    from nnforge.recipes import load_recipe
    from nnforge.recipes.runner import prepare

    recipe = load_recipe("federated-digits")
    assert [s.name for s in recipe.steps] == ["federate", "report"]
    config = recipe.steps[0].config
    assert (config.strategy, config.partition, config.partition_options, config.clients) == (
        "scaffold", "dirichlet", {"alpha": 0.5}, 10)
    prepare(recipe)  # the data split, the model and Flower are checked without starting anything


@pytest.mark.parametrize(("args", "words"), [
    (["digits", "--strategy", "fedavgg"], "did you mean"),
    (["digits", "--partition", "dirichlet", "-p", "alpha=0"], "alpha"),
    (["digits", "--strategy", "scaffold"], "scaffold"),  # the digits recipe trains with adamw
    (["digits", "-o", "proximal_mu=0.1"], "proximal_mu"),  # fedavg has no such option
    (["charlm", "--clients", "3"], "local.steps"),
    (["digits", "--clients", "3", "--partition", "source"], "name their source"),
    (["digits", "-p", "alpha"], "expected key=value"),
    (["digits", "--secure-aggregation", "--strategy", "fedmedian"], "secure aggregation"),
    (["digits", "--epsilon", "3"], "BatchNorm"),  # record-level DP on the BatchNorm digits-cnn
    (["digits", "--epsilon", "3", "--privacy-level", "clients"], "privacy.level"),
    (["digits", "--secure-method", "secagg+"], "give --secure-aggregation too"),
    (["digits", "--secure-aggregation", "--secure-method", "secagg+", "--strategy", "fedmedian"], "secagg+"),
    (["digits", "--secure-aggregation", "--secure-method", "paillier"], "secure.method"),
])
def test_bad_options_exit_2_and_write_nothing(workdir, capsys, args, words):
    assert main(["federate", *args]) == 2
    assert words in capsys.readouterr().err.replace("\n", " ")
    assert not (workdir / "runs").exists() and not (workdir / ".nnforge").exists()
