"""Flower's deployment engine: a SuperLink and three SuperNodes as separate processes on loopback, with TLS and
SuperNode authentication, started by the test. ``nnforge federate --superlink`` completes three rounds while one
SuperNode is SIGKILLed mid-round; a SuperNode whose key was never registered is refused; bad options exit 2.

The federation's SuperNodes heartbeat every 10 s (the shortest interval Flower's SuperLink accepts), so the SuperLink
notices the killed one 16-20 s after the kill instead of Flower's default 40-60 s, while a live node would have to
go 20 s without a heartbeat to be taken for dead; the intruder is Flower's ``flower-supernode`` as installed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time

import pytest

from nnforge.cli import main

pytestmark = pytest.mark.slow


def _events(kind):
    from nnforge.ledger import Ledger

    with Ledger.open(".nnforge/ledger.db") as led:
        return [e for e in led.events() if e.kind == kind]


def _kill_in_round_2(fed, node, done):
    """SIGKILL SuperNode ``node`` a second after its ClientApp starts for the second time (round 2's training)."""
    while fed.log(f"supernode{node}").count("flwr-clientapp") < 2 and not done.is_set():
        time.sleep(0.2)
    if not done.is_set():
        time.sleep(1.0)
        fed.kill(node)


def test_deployed_federation_completes_three_rounds_though_a_supernode_is_killed(workdir, capsys):
    from nnforge.federated.deployment import flower_env
    from nnforge.federated.loopback import LoopbackFederation, make_certificates

    with LoopbackFederation(nodes=3, folder=workdir / "federation", heartbeat_interval_s=10) as fed:
        # authentication: a SuperNode whose public key the SuperLink never registered is turned away
        (intruder_key, _), = make_certificates(workdir / "intruder", 1)["nodes"]
        log = workdir / "intruder.log"
        with log.open("w") as sink:  # the SuperNode exits; the SuperExec it spawned retries until its group dies
            intruder = subprocess.Popen(fed.supernode_command(intruder_key, 0, default_heartbeat=True),
                                        env=flower_env(workdir / "intruder"),
                                        stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = intruder.wait(timeout=120)
            finally:
                os.killpg(intruder.pid, signal.SIGKILL)
        assert code != 0 and "Failed to activate SuperNode" in log.read_text()
        assert fed.online() == 3
        # the federation's SuperNodes announced the interval they were started with (Flower's default: 30 s)
        with contextlib.closing(sqlite3.connect(fed.folder / "state.db")) as db:
            assert dict(db.execute("SELECT name, heartbeat_interval FROM node WHERE status = 'online'")) == {
                "node0": 10.0, "node1": 10.0, "node2": 10.0}

        done = threading.Event()
        killer = threading.Thread(target=_kill_in_round_2, args=(fed, 2, done), daemon=True)
        killer.start()
        try:
            code = main(["federate", "federated-digits", "--clients", "3", "--rounds", "3", "--strategy", "fedavg",
                         "--superlink", fed.deployment.superlink, "--root-certificates",
                         str(fed.deployment.root_certificates), "--json"])
        finally:
            done.set()
            killer.join(timeout=60)
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["federated_rounds"] == 3 and out["metrics"]["val_accuracy"] > 0.8
    (started,) = _events("federated.started")
    assert started.data["engine"] == "deployment" and started.data["superlink"] == fed.deployment.superlink
    rounds = [e.data for e in _events("federated.round")]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["replied"] == 3
    # round 2: node 2 died mid-round; the SuperLink noticed its missing heartbeat and the round went on with two
    assert rounds[1]["sampled"] == 3 and rounds[1]["replied"] == 2
    (lost,) = [c for c in rounds[1]["clients"] if c["error"]]
    assert "Node Unavailable" in lost["error"]
    assert rounds[2]["sampled"] == 2 and rounds[2]["replied"] == 2
    assert {c["partition"] for c in rounds[2]["clients"]} == {0, 1}
    (finished,) = _events("federated.finished")
    assert finished.data["engine"] == "deployment" and finished.data["rounds"] == 3
    html = (workdir / out["run_dir"] / "report.html").read_text(encoding="utf-8")
    assert "<h2>Federated learning</h2>" in html and "Node Unavailable" in html


@pytest.mark.parametrize(("args", "words"), [
    (["--superlink", "127.0.0.1:9093"], "root_certificates"),  # TLS unless insecure is said out loud
    (["--superlink", "127.0.0.1:9093", "--simulate", "--insecure"], "two engines"),
    (["--root-certificates", "ca.pem"], "give --superlink too"),
    (["--superlink", "no port", "--insecure"], "superlink"),
    (["--superlink", "127.0.0.1:9093", "--insecure", "--secure-aggregation", "--strategy", "fedavg"],
     "simulation engine"),
])
def test_bad_deployment_options_exit_2_and_write_nothing(workdir, capsys, args, words):
    assert main(["federate", "federated-digits", *args]) == 2
    assert words in capsys.readouterr().err.replace("\n", " ")
    assert not (workdir / "runs").exists() and not (workdir / ".nnforge").exists()


def test_a_deployed_job_needs_a_model_its_supernodes_can_rebuild():
    from nnforge.errors import ConfigError
    from nnforge.recipes import load_recipe
    from nnforge.recipes.steps.federate import job_spec

    with pytest.raises(ConfigError, match="registered architecture"):
        job_spec(load_recipe("quickstart"))  # a pretrained MiniLM: no architecture to rebuild by name
    spec = job_spec(load_recipe("federated-digits"))
    assert (spec.architecture, spec.dataset) == ("digits-cnn", "digits")


def test_deployment_config_and_job_round_trip():
    from nnforge.federated import DeploymentConfig, FederatedConfig
    from nnforge.federated.deployment import JobSpec, write_app

    with pytest.raises(ValueError, match="contradict"):
        DeploymentConfig(superlink="[::1]:9093", root_certificates="ca.pem", insecure=True)
    cfg = FederatedConfig(clients=3, deployment={"superlink": "[::1]:9093", "insecure": True})
    assert cfg.deployment is not None and cfg.deployment.insecure
    spec = JobSpec("digits-cnn", "digits", {"norm": "group"})
    assert JobSpec.from_dict(json.loads(json.dumps(spec.__dict__))) == spec
    import tempfile
    import tomllib
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        app = write_app(Path(tmp) / "app", spec, cfg, Path(tmp) / "out")
        doc = tomllib.loads((app / "pyproject.toml").read_text())
        job = json.loads(doc["tool"]["flwr"]["app"]["config"]["nnforge-job"])
        assert job["spec"]["options"] == {"norm": "group"} and FederatedConfig.model_validate(job["config"]) == cfg
        assert doc["tool"]["flwr"]["app"]["components"]["clientapp"] == "nnforge_app.apps:client"
