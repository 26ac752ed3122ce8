"""``nnforge runs``: every run folder carries its status (an interrupted run is marked, a dead process is seen);
list, show, compare, and rm (to the trash, with a run.deleted event in the ledger)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from nnforge import runs
from nnforge.cli import main
from nnforge.ledger import Ledger, default_actor
from nnforge.recipes.steps import STEPS

TINY = ["--set", "steps[0].train={max_steps: 2, eval_every: 2}", "--ledger", "l.db", "--json"]


def _run(capsys, *extra: str) -> dict:
    assert main(["run", "digits", *TINY, *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _kinds(run_id: str) -> list[str]:
    led = Ledger.open("l.db")
    try:
        return [e.kind for e in led.events(run=run_id)]
    finally:
        led.close()


@pytest.fixture
def two_runs(workdir, capsys, one_torch_thread):
    first = _run(capsys)
    second = _run(capsys, "--set", "steps[0].optimizer_options.lr=0.01")
    return first, second


def test_list_show_compare_and_rm(two_runs, capsys, monkeypatch):
    first, second = two_runs
    assert main(["runs", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in rows] == [first["run_id"], second["run_id"]]
    assert {r["status"] for r in rows} == {"finished"} and rows[0]["recipe"] == "digits"
    assert main(["runs", "show", first["run_id"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "finished" and shown["steps"] == ["train"] and shown["pid"] == os.getpid()
    assert shown["metrics"]["train_steps"] == 2 and shown["copied_from"] is None

    assert main(["runs", "compare", first["run_id"], second["run_id"], "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["recipe_diff"] == {"steps[0].config.optimizer_options.lr": [0.003, 0.01]}
    assert cmp["metrics"]["train_steps"] == [2, 2]
    assert main(["runs", "compare", first["run_id"], second["run_id"]]) == 0
    text = capsys.readouterr().out
    assert "recipe differences" in text and "0.0100" in text
    assert main(["runs", "compare", first["run_id"]]) == 2

    # without a terminal rm does not ask: it refuses without --yes
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    assert main(["runs", "rm", first["run_id"]]) == 2
    assert "pass --yes" in capsys.readouterr().err
    # a typed name is not taken on trust: without a token --actor is refused before anything moves
    assert main(["runs", "rm", first["run_id"], "--yes", "--actor", "ana"]) == 2
    assert "not taken on trust" in capsys.readouterr().err and runs.find_run(first["run_id"]).is_dir()
    assert main(["runs", "rm", first["run_id"], "--yes", "--json"]) == 0
    [moved] = json.loads(capsys.readouterr().out)
    assert moved["trash"].endswith(f"runs/.trash/{first['run_id']}") and os.path.isdir(moved["trash"])
    assert not (runs.find_run(second["run_id"]) / "..").resolve().joinpath(first["run_id"]).exists()
    led = Ledger.open("l.db")
    [deleted] = led.events(kind="run.deleted")
    assert deleted.run == first["run_id"] and deleted.actor == default_actor()  # no token: the OS user
    assert led.events(run=first["run_id"], kind="run.started")  # the run's events stay
    assert led.verify().ok
    led.close()
    assert main(["runs", "list", "--json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [second["run_id"]]


def test_ctrl_c_marks_the_run_interrupted_and_rm_failed_clears_it(workdir, capsys, monkeypatch, one_torch_thread):
    def stopped(self, ctx, config):
        raise KeyboardInterrupt

    monkeypatch.setattr(STEPS.get("train"), "run", stopped)
    assert main(["run", "digits", *TINY]) == 130
    [folder] = (workdir / "runs").iterdir()
    assert runs.read_config(folder)["status"] == "interrupted"
    assert _kinds(folder.name)[-2:] == ["step.started", "run.failed"]
    led = Ledger.open("l.db")
    failed = led.events(kind="run.failed")[-1].data
    led.close()
    assert failed["interrupted"] is True and failed["status"] == "interrupted"
    assert main(["runs", "list", "--status", "interrupted", "--json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [folder.name]
    assert main(["runs", "list", "--status", "broken"]) == 2
    assert main(["runs", "rm", "--failed", "--yes"]) == 0
    assert not folder.exists() and (workdir / "runs" / ".trash" / folder.name).is_dir()


def test_sigterm_marks_the_run_interrupted(workdir, capsys, monkeypatch, one_torch_thread):
    def terminated(self, ctx, config):
        os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler or `kill` sends
        raise AssertionError("SIGTERM did not stop the step")

    monkeypatch.setattr(STEPS.get("train"), "run", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["run", "digits", *TINY]) == 130
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the CLI's, only while the run runs
    [folder] = (workdir / "runs").iterdir()
    assert runs.read_config(folder)["status"] == "interrupted"
    led = Ledger.open("l.db")
    assert "SIGTERM" in led.events(kind="run.failed")[-1].data["error"]
    led.close()


def test_a_running_run_whose_process_died_is_listed_as_interrupted(workdir, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    base = {"run_id": "r", "created": "2026-01-01T00:00:00", "recipe": {"name": "x"}, "status": "running",
            **runs.process_facts(workdir / "runs" / "r")}
    for run_id, pid in (("dead", dead.pid), ("alive", os.getpid())):
        (workdir / "runs" / run_id).mkdir(parents=True)
        runs.write_config(workdir / "runs" / run_id, {**base, "run_id": run_id, "pid": pid})
    assert main(["runs", "list", "--json"]) == 0
    assert {r["run_id"]: r["status"] for r in json.loads(capsys.readouterr().out)} == {
        "dead": "interrupted", "alive": "running"}
    assert main(["runs", "rm", "alive", "--yes"]) == 2  # a live run is not removed
    assert "still running" in capsys.readouterr().err
