"""Studies on a shared storage: opening it, trial tickets, claiming trials, and recovering dead workers' trials.

Storage is a journal file by default (Optuna's ``JournalFileBackend``: an append-only log under a file lock,
safe for several processes on one machine) or PostgreSQL by ``postgresql://`` URL (Optuna's RDB storage, for
many machines). SQLite is not offered: handing out enqueued trials, which the tickets below rely on, is not
safe on SQLite with parallel workers (Optuna's maintainers in optuna/optuna#4002), and Optuna's parallelization
guide points to a file storage for several processes on one machine and an RDB server for several machines.

Exactly ``trials`` trials, none lost or duplicated, with any number of workers: the process that creates the
study enqueues ``trials`` *tickets* (empty WAITING trials) before anyone runs; a worker claims a ticket by
moving it from WAITING to RUNNING, which the storage does atomically (a second claimer is refused), and stops
when none is left. A worker records its host and process on the trial it claims; a RUNNING trial whose process
is gone (same host, checked from ``/proc``) or, on PostgreSQL, whose heartbeat stopped, is failed and a copy
with the same parameters is enqueued (Optuna's ``RetryHeartbeatStaleTrialCallback``), so a crashed study
resumes where it stopped when ``search`` is called again on the same storage and name.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nnforge.errors import ConfigError, MissingDependencyError, check_output_path
from nnforge.search._optuna import optuna

__all__ = ["open_storage", "storage_label", "open_study", "claim", "fail_dead_trials", "unfinished_work",
           "heartbeat", "superseded", "abandon", "trial_storage", "open_pruning_study", "WORKER_KEY", "BUDGET_KEY", "CONFIG_KEY"]

log = logging.getLogger("nnforge.search")

WORKER_KEY = "nnforge:worker"  # system attr of a claimed trial: {"host", "pid", "start"}
BUDGET_KEY = "nnforge:trials"  # study user attr: the number of trials ticketed so far (set after the tickets)
CONFIG_KEY = "nnforge:search_config"  # study user attr: the SearchConfig that created the study (JSON)
HEARTBEAT_S = 5  # PostgreSQL: a running trial's heartbeat period; stale after GRACE_S without one
GRACE_S = 30
_BUDGET_WAIT_S = 30.0  # how long a joining process waits for the creator's tickets before topping up itself


# --- storage -----------------------------------------------------------------------------------------------------

def _is_url(target: str) -> bool:
    return "://" in target


def open_storage(target: str | os.PathLike[str]) -> Any:
    """An Optuna storage for a journal file path or a ``postgresql://`` URL.

    Raises:
        ConfigError: another URL scheme, a folder or database given as the journal file, or a missing folder.
    """
    text = os.fspath(target)
    if _is_url(text):
        scheme = text.split("://", 1)[0].lower()
        if scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise ConfigError(f"storage: {scheme!r} URLs are not supported; give a journal file path (one "
                              f"machine) or a postgresql:// URL (many machines)")
        url = "postgresql+psycopg://" + text.split("://", 1)[1]  # psycopg 3, the driver nnforge[postgres] installs
        mod = optuna()
        if importlib.util.find_spec("psycopg") is None:
            raise MissingDependencyError("a PostgreSQL storage needs psycopg: pip install 'nnforge[postgres]'")
        with warnings.catch_warnings():  # the heartbeat is marked experimental; it is how RDB workers are watched
            warnings.simplefilter("ignore", mod.exceptions.ExperimentalWarning)
            return mod.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=_retry_callback())
    path = Path(text)
    if not path.parent.is_dir():
        raise ConfigError(f"storage: folder {str(path.parent)!r} does not exist; create it or give another path")
    check_output_path(path)
    mod = optuna()
    return mod.storages.JournalStorage(mod.storages.journal.JournalFileBackend(str(path)))


def _retry_callback() -> Any:
    """Optuna's callback that enqueues a failed trial again with its parameters (marked experimental there)."""
    mod = optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mod.exceptions.ExperimentalWarning)
        return mod.storages.RetryHeartbeatStaleTrialCallback()


def storage_label(target: str | os.PathLike[str]) -> str:
    """The storage as shown in results and logs: a path, or a URL without its password."""
    text = os.fspath(target)
    if _is_url(text) and "@" in text:
        scheme, rest = text.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else text
    return text


# --- study and tickets -------------------------------------------------------------------------------------------

def superseded(trials: list[Any]) -> set[int]:
    """Numbers of failed trials that were retried (a later trial's retry history names them)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _counted(study: Any) -> int:
    trials = study.get_trials(deepcopy=False)
    return len(trials) - len(superseded(trials))


def open_study(storage: Any, name: str, directions: list[str], trials: int, *, sampler: Any, pruner: Any,
               config_json: dict[str, Any]) -> Any:
    """Create the study with ``trials`` tickets, or load it and top its tickets up to ``trials``.

    Raises:
        ConfigError: the stored study has other objective directions.
    """
    mod = optuna()
    try:
        study = mod.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                 directions=directions, load_if_exists=False)
        _add_tickets(study, trials)
        study.set_user_attr(CONFIG_KEY, config_json)
        study.set_user_attr(BUDGET_KEY, trials)
        log.info("study %r created with %d trials", name, trials)
        return study
    except mod.exceptions.DuplicatedStudyError:
        pass
    study = mod.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise ConfigError(f"study {name!r} exists with directions {stored}, not {directions}; use another "
                          f"study_name or storage for a different objective")
    deadline = time.monotonic() + _BUDGET_WAIT_S
    while BUDGET_KEY not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.2)  # the creator is still writing its tickets
    fail_dead_trials(study)
    missing = trials - _counted(study)
    if missing > 0:
        _add_tickets(study, missing)
        study.set_user_attr(BUDGET_KEY, trials)
    elif missing < 0:
        log.warning("study %r already has %d trials, more than trials=%d: a study grows on resume but does not "
                    "shrink; its queued trials still run", name, trials - missing, trials)
    log.info("study %r resumed: %d trials, %d added", name, trials, max(missing, 0))
    return study


def open_pruning_study(storage: Any, name: str, direction: str, pruner: Any) -> Any:
    """The single-objective twin of a multi-objective study, where a pruner ranks the first objective's curves."""
    mod = optuna()
    return mod.create_study(study_name=f"{name}:pruning", storage=storage, pruner=pruner, direction=direction,
                            sampler=mod.samplers.RandomSampler(seed=0), load_if_exists=True)


def _add_tickets(study: Any, n: int) -> None:
    for _ in range(n):
        study.enqueue_trial({}, skip_if_exists=False)


# --- workers -----------------------------------------------------------------------------------------------------

def _process_start(pid: int) -> str | None:
    """A token that changes when ``pid`` is reused: its start time from ``/proc`` (None: no such process, or a
    dead one its parent has not reaped yet: a zombie keeps its ``/proc`` entry but runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        try:  # no /proc: the process exists or not, reuse undetected
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "alive"


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _is_dead(worker: dict[str, Any]) -> bool:
    if worker.get("host") != socket.gethostname():
        return False  # another machine: only the PostgreSQL heartbeat can tell
    token = _process_start(int(worker["pid"]))
    return token is None or (token != "alive" and token != worker.get("start"))


def trial_storage(study: Any) -> Any:
    # Optuna wraps an RDB storage in a cache when it opens the study; state changes must go through the
    # same object the study reads from, which is study._storage.
    return study._storage


def fail_dead_trials(study: Any) -> int:
    """Fail the RUNNING trials of dead workers and enqueue a retry of each; returns how many."""
    mod = optuna()
    storage = trial_storage(study)
    retry = _retry_callback()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(mod.trial.TrialState.RUNNING,)):
        worker = trial.system_attrs.get(WORKER_KEY)
        if not worker or not _is_dead(worker):
            continue
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=mod.trial.TrialState.FAIL):
                continue
        except mod.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first
        log.warning("trial %d: its worker (pid %s) is gone; failed and enqueued again", trial.number, worker["pid"])
        retry(study, storage.get_trial(trial._trial_id))
        failed += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mod.exceptions.ExperimentalWarning)
        mod.storages.fail_stale_trials(study)  # PostgreSQL: trials whose heartbeat stopped (no-op for a journal)
    return failed


def abandon(study: Any, trial: Any) -> None:
    """Fail a trial this process is giving up (interrupted) and enqueue it again, as for a dead worker."""
    mod = optuna()
    storage = trial_storage(study)
    try:
        if storage.set_trial_state_values(trial._trial_id, state=mod.trial.TrialState.FAIL):
            _retry_callback()(study, storage.get_trial(trial._trial_id))
    except mod.exceptions.UpdateFinishedTrialError:
        pass


def claim(study: Any) -> Any | None:
    """Claim a WAITING trial (a ticket or a retry) for this process; None when there is none left."""
    mod = optuna()
    storage = trial_storage(study)
    for frozen in study.get_trials(deepcopy=False, states=(mod.trial.TrialState.WAITING,)):
        try:
            if not storage.set_trial_state_values(frozen._trial_id, state=mod.trial.TrialState.RUNNING):
                continue
        except mod.exceptions.UpdateFinishedTrialError:
            continue
        storage.set_trial_system_attr(frozen._trial_id, WORKER_KEY, _me())
        return mod.trial.Trial(study, frozen._trial_id)
    return None


def unfinished_work(study: Any) -> bool:
    """Whether other workers still run trials that may yet need a retry (so an idle worker should wait)."""
    mod = optuna()
    running = study.get_trials(deepcopy=False, states=(mod.trial.TrialState.RUNNING,))
    return any(WORKER_KEY in t.system_attrs for t in running)


@contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """Record the trial's heartbeat while it runs (PostgreSQL only; a journal's workers are checked by pid)."""
    storage = trial_storage(study)
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            storage.record_heartbeat(trial._trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, name=f"nnforge-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def work(study: Any, run_trial: Callable[[Any], None], *, deadline: float | None,
         on_finished: Callable[[], None] | None = None, poll_s: float = 0.5) -> int:
    """Claim and run trials until no ticket is left and no other worker's trial may still need a retry.

    Args:
        run_trial: runs one claimed trial to its end (tells the study its outcome).
        deadline: ``time.monotonic()`` after which no new trial is claimed (None: no limit).
    Returns:
        the number of trials this worker ran.
    """
    ran = 0
    while deadline is None or time.monotonic() < deadline:
        fail_dead_trials(study)
        trial = claim(study)
        if trial is None:
            if not unfinished_work(study):
                break
            time.sleep(poll_s)
            continue
        with heartbeat(study, trial):
            run_trial(trial)
        ran += 1
        if on_finished is not None:
            on_finished()
    return ran
