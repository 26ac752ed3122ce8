"""Scale-out: worker processes on one journal file or PostgreSQL; exactly N trials; a killed worker's study resumes.

Worker processes are spawned and import their trial function from this module (module-level functions).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter

import pytest

from nnforge.search import Objective, Param, SearchConfig, search
from nnforge.search._study import open_storage

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.slow  # worker processes each import torch and Optuna

SPACE = {"x": Param(kind="float", low=-5, high=5), "k": Param(kind="int", low=0, high=3)}
BLOCK_ENV = "NNFORGE_TEST_BLOCK_TRIAL"


def quadratic(ctx):
    return {"loss": (ctx.params["x"] - 1) ** 2 + ctx.params["k"], "pid": float(os.getpid())}


def blocking(ctx):
    """Blocks forever on the trial named by BLOCK_ENV (set only in the process the test kills)."""
    if os.environ.get(BLOCK_ENV) == str(ctx.number):
        while True:
            time.sleep(0.1)
    return quadratic(ctx)


KILL_ENV = "NNFORGE_TEST_KILL_MARK"
COMPANY_ENV = "NNFORGE_TEST_COMPANY_DIR"


def waits_for_company(ctx):
    """Each worker signs in; no trial finishes before two workers have (at most 120 s). On a loaded machine the
    second worker's start (a process importing torch and Optuna) can otherwise take longer than the first one
    needs for all 40 trials, and "both workers ran trials" would be a race, not a property."""
    folder = os.environ[COMPANY_ENV]
    open(os.path.join(folder, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 120
    while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return quadratic(ctx)


def dies_once(ctx):
    """The first worker to reach trial 3 kills its own process (SIGKILL: no cleanup, like the OOM killer)."""
    mark = os.environ[KILL_ENV]
    if ctx.number == 3 and not os.path.exists(mark):
        open(mark, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return quadratic(ctx)


def test_the_surviving_worker_retries_a_dead_workers_trial_and_finishes_the_study(tmp_path, monkeypatch):
    monkeypatch.setenv(KILL_ENV, str(tmp_path / "killed"))  # the spawned workers inherit it
    config = SearchConfig(space=SPACE, objectives=[Objective(metric="loss")], trials=8, sampler="random", seed=2)
    result = search(dies_once, config, storage=tmp_path / "s.journal", workers=2)  # no error: the study is whole
    assert (tmp_path / "killed").exists()
    done = _assert_exactly(result, 8)
    assert [t.number for t in result.trials if t.state == "retried"] == [3]
    assert [t.params for t in done if t.number > 7] == [result.trials[3].params]  # the retry, same parameters


def _run_and_block(config, storage):
    os.environ[BLOCK_ENV] = "2"  # this child process only
    search(blocking, config, storage=storage)


def _assert_exactly(result, n):
    done = [t for t in result.trials if t.state != "retried"]
    assert [t.state for t in done] == ["complete"] * n, Counter(t.state for t in result.trials)
    ids = Counter(t.number for t in result.trials)
    assert max(ids.values()) == 1  # no trial recorded twice
    return done


def test_two_workers_on_one_journal_complete_exactly_40_trials(tmp_path, monkeypatch):
    (tmp_path / "company").mkdir()
    monkeypatch.setenv(COMPANY_ENV, str(tmp_path / "company"))  # the spawned workers inherit it
    config = SearchConfig(space=SPACE, objectives=[Objective(metric="loss")], trials=40, sampler="random", seed=3)
    seen = []
    result = search(waits_for_company, config, storage=tmp_path / "s.journal", workers=2, progress=seen.append)
    done = _assert_exactly(result, 40)
    assert len(result.trials) == 40 and sorted(t.number for t in done) == list(range(40))
    pids = Counter(int(t.metrics["pid"]) for t in done)
    assert len(pids) == 2 and os.getpid() not in pids  # both workers ran trials; the caller only watched
    assert len({(t.params["x"], t.params["k"]) for t in done}) == 40  # the workers' samplers draw different points
    assert seen and seen[-1].complete == 40 and seen[-1].running == 0
    reported = [t.number for snap in seen for t in snap.new]
    assert sorted(reported) == list(range(40))  # every trial announced once, as it finished


def _wait_running(target, name, number, timeout_s=120.0):
    storage = open_storage(target)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            if any(t.number == number and t.params for t in running):
                return next(t for t in running if t.number == number)
        except KeyError:
            pass  # not created yet
        time.sleep(0.1)
    raise AssertionError(f"trial {number} never started")


@pytest.fixture(params=["journal", "postgresql"])
def storage_target(request, tmp_path):
    if request.param == "journal":
        return str(tmp_path / "s.journal")
    return request.getfixturevalue("postgres_url")


def test_a_killed_workers_study_resumes_with_its_trial_retried(storage_target):
    path = storage_target
    config = SearchConfig(space=SPACE, objectives=[Objective(metric="loss")], trials=6, sampler="random", seed=5)
    proc = multiprocessing.get_context("spawn").Process(target=_run_and_block, args=(config, path))
    proc.start()
    try:
        stuck = _wait_running(path, config.study_name, 2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    result = search(quadratic, config, storage=path)
    done = _assert_exactly(result, 6)
    retried = [t for t in result.trials if t.state == "retried"]
    assert [t.number for t in retried] == [2]
    again = [t for t in done if t.params == stuck.params]
    assert len(again) == 1 and again[0].number > 2  # run again with the dead trial's parameters
    assert {int(t.metrics["pid"]) for t in done if t.number < 2} != {os.getpid()}  # the first two came from the child


def test_two_workers_on_postgresql_complete_exactly_the_trials(postgres_url, tmp_path, monkeypatch):
    (tmp_path / "company").mkdir()
    monkeypatch.setenv(COMPANY_ENV, str(tmp_path / "company"))
    config = SearchConfig(space=SPACE, objectives=[Objective(metric="loss")], trials=10, sampler="random")
    result = search(waits_for_company, config, storage=postgres_url, workers=2)
    done = _assert_exactly(result, 10)
    assert sorted(t.number for t in done) == list(range(10))
    assert len({int(t.metrics["pid"]) for t in done}) == 2
    assert result.storage == postgres_url  # no password in this URL, shown as given
    resumed = search(quadratic, config.replace(trials=12), storage=postgres_url)
    _assert_exactly(resumed, 12)
