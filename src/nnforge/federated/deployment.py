"""Federated jobs on Flower's deployment engine: a SuperLink and SuperNodes running as processes of their own
(on other machines, or on this one), talking gRPC over TLS, each SuperNode authenticated by its key.

Who holds what:

- **The SuperLink** (``flower-superlink``, run by whoever coordinates the federation) routes messages; it holds
  the TLS server certificate and the list of SuperNode public keys it admits (``flwr supernode register``).
- **Each SuperNode** (``flower-supernode --node-config "partition-id=I"``, one per data holder) holds its own
  private key and the CA certificate that signed the SuperLink's; it runs nnforge's ClientApp on its data.
- **The submitter** (``nnforge federate RECIPE --superlink HOST:PORT`` or :func:`submit`) builds a Flower App
  whose ServerApp and ClientApp are nnforge's, with the job (:class:`JobSpec` and the
  :class:`~nnforge.federated.FederatedConfig`) in its run config, runs it with ``flwr run``, follows its rounds
  and loads the final global model.

The ServerApp runs nnforge's round loop (the same as the simulation engine's: Flower's strategy, anomaly scores,
privacy accounting, a round that waits for every client to connect before round 1 and then goes on with at least
``min_clients``: a SuperNode that dies mid-round costs that round one reply, not the run). It writes each round
(``rounds.jsonl``), the final model (``model.safetensors``) and the result (``result.json``) to the job's
``out_dir``, which the submitter reads: on a remote SuperLink that folder must be shared with the submitter.

Each process rebuilds the model from its registered architecture and loads the data by its registered name;
each SuperNode takes its ``partition-id``'s part of the seeded split. The first global model is the submitter's
(its weights travel in ``out_dir``), so a deployed run starts where the simulated one would.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from nnforge.errors import ConfigError
from nnforge.federated._config import DeploymentConfig, FederatedConfig
from nnforge.federated._records import (
    ClientRound,
    FederatedError,
    FederatedResult,
    RoundCallback,
    RoundRecord,
)

__all__ = ["JobSpec", "submit", "server_main", "client_train", "make_server_app", "make_client_app", "flwr_command", "RUN_CONFIG_KEY"]

log = logging.getLogger(__name__)

RUN_CONFIG_KEY = "nnforge-job"
"""The run-config entry holding the job (JSON: spec, config, out_dir)."""
STATUS_EVERY_S = 10.0  # how often the run's status is asked of the SuperLink while no result is written
_PUBLISHER = "nnforge"


@dataclass(frozen=True)
class JobSpec:
    """What every process of a deployed job rebuilds on its own machine: the model (a registered architecture and
    its options) and the data (a registered dataset and its options)."""

    architecture: str
    dataset: str
    options: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> tuple[nn.Module, Any]:
        from nnforge import data as data_mod
        from nnforge import models

        return models.build(self.architecture, **self.options), data_mod.load(self.dataset, **self.dataset_options)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        return cls(architecture=d["architecture"], dataset=d["dataset"], options=dict(d.get("options") or {}),
                   dataset_options=dict(d.get("dataset_options") or {}))


# --- the apps (run inside flwr-serverapp / flwr-clientapp) ---------------------------------------------------------
def _job(context: Any) -> tuple[JobSpec, FederatedConfig, Path]:
    try:
        job = json.loads(str(context.run_config[RUN_CONFIG_KEY]))
    except (KeyError, ValueError) as exc:
        raise FederatedError(f"the run config carries no nnforge job ({RUN_CONFIG_KEY}): {exc}") from None
    return JobSpec.from_dict(job["spec"]), FederatedConfig.model_validate(job["config"]), Path(job["out_dir"])


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, default=str))
    os.replace(tmp, path)


def server_main(grid: Any, context: Any) -> None:
    """The ServerApp: nnforge's round loop over the SuperNodes ``grid`` reaches, reporting into ``out_dir``."""
    from safetensors.torch import load_file, save_file

    from nnforge.federated._run import _Loop
    from nnforge.federated._setup import _prepare

    spec, config, out = _job(context)
    try:
        model, data = spec.build()
        model.load_state_dict(load_file(str(out / "initial.safetensors")))
        job, mechanisms, partition = _prepare(model, data, config)
        rounds_file = (out / "rounds.jsonl").open("a")

        def record(r: RoundRecord) -> None:
            rounds_file.write(json.dumps(r.to_dict(), default=str) + "\n")
            rounds_file.flush()
            ev = r.evaluation or {}
            log.info("nnforge round %d: %d/%d replied %s", r.round, r.replied, r.sampled,
                     " ".join(f"{k} {v:.4f}" for k, v in ev.items()))

        loop = _Loop(config, model, data, [record], job.block_size, mechanisms,
                     total_examples=sum(d.examples for d in job.data))
        loop.run(grid)
        rounds_file.close()
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / "model.safetensors.tmp"))
        os.replace(out / "model.safetensors.tmp", out / "model.safetensors")
        result = FederatedResult(config=config.to_dict(), rounds=loop.rounds, partition=partition,
                                 engine="deployment", seconds=loop.seconds, stopped=loop.stopped, failed=loop.failed)
        _write_json(out / "result.json", result.to_dict())
    except BaseException as exc:
        _write_json(out / "error.json", {"error": f"{type(exc).__name__}: {exc}"})
        raise


_CLIENT_JOBS: dict[str, Any] = {}


def client_train(msg: Any, context: Any) -> Any:
    """The ClientApp's ``train``: this SuperNode's part of the data (its ``partition-id``), one round of local
    training with nnforge's loop (DP-SGD when the job asks), the reply."""
    from nnforge.federated._client import train_reply
    from nnforge.federated._setup import _prepare

    raw = str(context.run_config[RUN_CONFIG_KEY])
    if raw not in _CLIENT_JOBS:  # one per process (Flower starts a ClientApp process per message by default)
        spec, config, _ = _job(context)
        model, data = spec.build()
        _CLIENT_JOBS[raw] = _prepare(model, data, config)[0]
    job = _CLIENT_JOBS[raw]
    if "partition-id" not in context.node_config:
        raise FederatedError("this SuperNode has no partition-id: start it with --node-config \"partition-id=I\"")
    partition = int(context.node_config["partition-id"])
    if not 0 <= partition < len(job.data):
        raise FederatedError(f"this SuperNode's partition-id {partition} is not one of the job's {len(job.data)} "
                             f"clients (0..{len(job.data) - 1})")
    return train_reply(job, msg, context)


def make_server_app() -> Any:
    """Flower's ``ServerApp`` around :func:`server_main` (the generated app's ``serverapp`` component)."""
    from nnforge.federated._flower import require

    server = require("flwr.serverapp").ServerApp()
    server.main()(server_main)
    return server


def make_client_app() -> Any:
    """Flower's ``ClientApp`` around :func:`client_train` (the generated app's ``clientapp`` component)."""
    from nnforge.federated._flower import require

    client = require("flwr.clientapp").ClientApp()
    client.train()(client_train)
    return client


# --- the submitter ---------------------------------------------------------------------------------------------
def flwr_command(name: str) -> str:
    """A Flower executable (``flwr``, ``flower-superlink``, …) from this Python's environment."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} not found: install Flower (pip install 'nnforge[federated]')")
    return found


def flower_env(home: Path) -> dict[str, str]:
    """The environment Flower's processes run in: their own FLWR_HOME, this Python's bin first on PATH (the
    SuperLink and SuperNodes start flwr-serverapp / flwr-clientapp by name), no telemetry, no dependency
    installation at run time (it would download the app's dependencies from the internet)."""
    env = dict(os.environ)
    env.update({"FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
    return env


def write_connection(home: Path, name: str, deployment: DeploymentConfig) -> None:
    """``flwr``'s config: one connection ``name`` to the SuperLink (TLS with the given CA, or insecure)."""
    home.mkdir(parents=True, exist_ok=True)
    trust = (f'root-certificates = {json.dumps(str(Path(deployment.root_certificates).resolve()))}'
             if deployment.root_certificates else "insecure = true")
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
                                      f'address = {json.dumps(deployment.superlink)}\n{trust}\n')


def flwr(home: Path, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the ``flwr`` CLI with ``home``'s connection."""
    proc = subprocess.run([flwr_command("flwr"), *args], env=flower_env(home), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise FederatedError(f"flwr {' '.join(args[:2])} failed (exit {proc.returncode}): "
                             f"{(proc.stdout + proc.stderr).strip()[-1500:]}")
    return proc


def write_app(folder: Path, spec: JobSpec, config: FederatedConfig, out_dir: Path) -> Path:
    """The Flower App folder: a pyproject naming nnforge's apps, and the job in its run config."""
    import flwr

    pkg = folder / "nnforge_app"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""A federated job generated by nnforge (nnforge.federated.deployment)."""\n')
    (pkg / "apps.py").write_text("from nnforge.federated.deployment import make_client_app, make_server_app\n\n"
                                  "server = make_server_app()\nclient = make_client_app()\n")
    job = json.dumps({"spec": asdict(spec), "config": config.model_dump(mode="json"), "out_dir": str(out_dir.resolve())})
    (folder / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "nnforge-job"
version = "1.0.0"
description = "A federated job generated by nnforge"
dependencies = ["flwr=={flwr.__version__}"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "{_PUBLISHER}"

[tool.flwr.app.components]
serverapp = "nnforge_app.apps:server"
clientapp = "nnforge_app.apps:client"

[tool.flwr.app.config]
{RUN_CONFIG_KEY} = {json.dumps(job)}
""")
    return folder


def _status(home: Path, run_id: int) -> str:
    proc = flwr(home, "ls", "nnforge", "--run-id", str(run_id), "--format", "json", check=False)
    try:
        return str(json.loads(proc.stdout)["runs"][0]["status"])
    except (ValueError, KeyError, IndexError):
        return "unknown"


def _record(d: dict[str, Any]) -> RoundRecord:
    clients = [ClientRound(**c) for c in d.pop("clients", [])]
    return RoundRecord(**{**d, "clients": clients})


def submit(model: nn.Module, spec: JobSpec, config: FederatedConfig, *,
           callbacks: Sequence[RoundCallback] = (), log: Callable[[str], None] | None = None) -> FederatedResult:
    """Run ``config`` on the SuperLink ``config.deployment`` names; ``model``'s weights are the first global model
    and, after the call, the last. Each round reaches ``callbacks`` as the ServerApp reports it.

    Raises:
        ConfigError: no deployment in ``config``, or a job its processes could not rebuild.
        FederatedError: the SuperLink refused the run, the run failed (its log's tail is in the message) or it
            ran past ``deployment.timeout_s`` (then it is stopped).
    """
    from safetensors.torch import load_file, save_file

    dep = config.deployment
    if dep is None:
        raise ConfigError("submit: config.deployment names no SuperLink")
    _check_spec(model, spec)
    out = Path(dep.out_dir) if dep.out_dir else Path(tempfile.mkdtemp(prefix="nnforge-federated-"))
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("rounds.jsonl", "result.json", "error.json", "model.safetensors"):
        (out / stale).unlink(missing_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(out / "initial.safetensors"))
    with tempfile.TemporaryDirectory(prefix="nnforge-flwr-") as tmp:
        home = Path(tmp) / "home"
        write_connection(home, "nnforge", dep)
        app = write_app(Path(tmp) / "app", spec, config, out)
        started = time.perf_counter()
        proc = flwr(home, "run", str(app), "nnforge", "--format", "json", timeout=300.0, check=False)
        try:
            run_id = int(json.loads(proc.stdout)["run-id"])
        except (ValueError, KeyError):
            raise FederatedError(f"the SuperLink at {dep.superlink} did not accept the run (exit "
                                 f"{proc.returncode}): {(proc.stdout + proc.stderr).strip()[-1500:]}") from None
        if log:
            log(f"run {run_id} submitted to {dep.superlink}")
        seen = 0
        status = "pending"
        asked = 0.0
        while True:
            seen = _follow(out / "rounds.jsonl", seen, callbacks)
            # `flwr ls` is a process of its own (about 1 s of CPU, taken from the SuperNodes on a small machine):
            # asked every STATUS_EVERY_S, or at once when the ServerApp has written its result or its error
            ended = (out / "result.json").exists() or (out / "error.json").exists()
            if ended or time.perf_counter() - asked >= STATUS_EVERY_S:
                asked = time.perf_counter()
                status = _status(home, run_id)
                if status.startswith("finished"):
                    seen = _follow(out / "rounds.jsonl", seen, callbacks)
                    break
            if time.perf_counter() - started > dep.timeout_s:
                flwr(home, "stop", str(run_id), "nnforge", check=False)
                raise FederatedError(f"run {run_id} ran past deployment.timeout_s ({dep.timeout_s:g} s): stopped")
            time.sleep(0.5)
        if status != "finished:completed" or not (out / "result.json").exists():
            tail = flwr(home, "log", str(run_id), "nnforge", "--show", check=False, timeout=60.0)
            why = ""
            if (out / "error.json").exists():
                why = json.loads((out / "error.json").read_text())["error"] + "; "
            raise FederatedError(f"run {run_id} ended {status}: {why}its log ends: "
                                 f"{(tail.stdout + tail.stderr).strip()[-1500:]}")
    doc = json.loads((out / "result.json").read_text())
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    return FederatedResult(config=doc["config"], rounds=[_record(r) for r in doc["rounds"]],
                           partition=doc["partition"], engine="deployment", seconds=float(doc["seconds"]),
                           stopped=doc.get("stopped"), failed=doc.get("failed"))


def _follow(path: Path, seen: int, callbacks: Sequence[RoundCallback]) -> int:
    """Hand the rounds written since ``seen`` to the callbacks; the number of rounds handed so far."""
    if not path.exists():
        return seen
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    for line in lines[seen:]:
        record = _record(json.loads(line))
        for cb in callbacks:
            cb(record)
    return max(seen, len(lines))


def _check_spec(model: nn.Module, spec: JobSpec) -> None:
    """The spec must rebuild ``model``'s architecture (the processes load its weights into what they build)."""
    from nnforge import models

    try:
        built = models.build(spec.architecture, **spec.options)
    except Exception as exc:
        raise ConfigError(f"deployment: architecture {spec.architecture!r} with options {spec.options} cannot be "
                          f"built: {exc}") from None
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    if have != want:
        diff = sorted(set(have) ^ set(want)) or [k for k in have if have[k] != want.get(k)]
        raise ConfigError(f"deployment: the model is not architecture {spec.architecture!r} with options "
                          f"{spec.options} (differs at {', '.join(diff[:3])}); the SuperNodes rebuild it from those")
