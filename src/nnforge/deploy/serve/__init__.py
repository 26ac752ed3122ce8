"""``nnforge serve``: a model behind FastAPI with dynamic batching, an OOD guard and a confidence threshold that
route inputs to people, a halt switch for overseers, and every decision in the ledger.

>>> from nnforge.deploy.serve import ServeConfig, Service, TorchBackend, create_app, run_server
>>> service = Service(TorchBackend(model), labels, ServeConfig(max_batch=16), ledger=".nnforge/ledger.db",
...                   run="my-run")  # doctest: +SKIP
>>> run_server(create_app(service, UserStore.for_ledger(".nnforge/ledger.db")), ServeConfig())  # doctest: +SKIP

See docs/serving.md. Needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

from nnforge.deploy.serve.backends import (
    Backend,
    BackendOutput,
    OnnxBackend,
    TorchBackend,
    choose_backend,
    input_kind,
    onnx_backend,
)
from nnforge.deploy.serve.config import ServeConfig
from nnforge.deploy.serve.service import Busy, Decision, Halted, Service

__all__ = ["Backend", "BackendOutput", "OnnxBackend", "TorchBackend", "choose_backend", "input_kind", "onnx_backend",
           "ServeConfig", "Service", "Decision", "Halted", "Busy", "create_app", "run_server", "Metrics"]


def create_app(service: Service, users: object) -> object:
    """The FastAPI app (see :mod:`nnforge.deploy.serve.app`)."""
    from nnforge.deploy.serve.app import create_app as _create

    return _create(service, users)


def __getattr__(name: str) -> object:
    if name == "Metrics":
        from nnforge.deploy.serve.metrics import Metrics

        return Metrics
    raise AttributeError(name)


def run_server(app: object, config: ServeConfig) -> None:
    """Run ``app`` with uvicorn on ``config.host:config.port`` (one worker: the model lives in this process)."""
    import uvicorn

    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False,  # type: ignore[arg-type]
                timeout_graceful_shutdown=10)
