"""The HTTP face of a :class:`~nnforge.deploy.serve.service.Service` (FastAPI).

| route | who | what |
| --- | --- | --- |
| ``POST /predict`` | caller or higher | ``{"inputs": [...]}`` → one decision per input |
| ``GET /health`` | anyone | status (``ok`` or ``halted``), run, variant, backend, queue |
| ``GET /metrics`` | anyone | Prometheus text format |
| ``POST /control/halt``, ``/control/resume`` | reviewer or higher | stop / restart answering |
| ``GET /review``, ``POST /review/{id}`` | reviewer or higher | routed and flagged inputs; decide or override |

Every caller sends ``Authorization: Bearer NAME:SECRET`` (a token from ``nnforge users add NAME --role caller``).
A token is checked with scrypt once; afterwards the server remembers its sha256 until the user's stored hash
changes (a rotated token or a removed user is refused at once).

Status codes: 401 no or a wrong token, 403 a role too low, 413 a body over ``max_body_bytes``, 422 a malformed
request (FastAPI's validation, field by field), 429 a full queue, 503 halted or timed out.
"""

# no ``from __future__ import annotations``: FastAPI reads the request model built in create_app from the
# endpoint's annotations, which must be objects, not strings naming a local
import hashlib
import os
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from nnforge.deploy.serve.service import Busy, Halted, Service
from nnforge.errors import ConfigError, IntegrityError

__all__ = ["create_app", "TokenCache"]


class TokenCache:
    """Authenticates bearer tokens against a :class:`~nnforge.govern.users.UserStore`, scrypt once per token."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._known: dict[str, tuple[Any, str | None]] = {}  # sha256(token) -> (user, stored hash then)
        self._lock = threading.Lock()
        self._mtime: float | None = None

    def _stamp(self) -> float | None:
        try:
            return os.stat(self.store.path).st_mtime
        except OSError:
            return None

    def authenticate(self, token: str | None) -> Any:
        from nnforge.govern.users import AccessDenied

        if not token:
            raise AccessDenied("refused: no token (send 'Authorization: Bearer NAME:SECRET')")
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        stamp = self._stamp()
        with self._lock:
            if stamp != self._mtime:  # the user store changed: every cached token is checked again
                self._known.clear()
                self._mtime = stamp
            hit = self._known.get(key)
        if hit is not None:
            return hit[0]
        user = self.store.authenticate(token)
        with self._lock:
            self._known[key] = (user, self.store.credential_digest(user.name))
        return user


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before the app parses it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                        send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length" and (not v.isdigit() or int(v) > self.limit):
                await _plain(send, 413, f"request body over {self.limit} bytes")
                return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _plain(send, 413, f"request body over {self.limit} bytes")


class _TooLarge(Exception):
    pass


async def _plain(send: Callable[[Any], Awaitable[None]], status: int, text: str) -> None:
    import json

    body = json.dumps({"detail": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Prediction(BaseModel):
    status: Literal["answered", "flagged", "review"]
    label: str | None = Field(description="null while a person decides (status review)")
    confidence: float
    probabilities: dict[str, float] | None
    reasons: list[str]
    ood_score: float | None = None
    review_item: int | None = None


class PredictResponse(BaseModel):
    request: str = Field(description="the id the ledger records this request's decisions under")
    predictions: list[Prediction]
    run: str
    variant: str | None
    backend: str


class ExplainResponse(BaseModel):
    run: str
    variant: str | None
    explanations: list[dict[str, Any]] = Field(description="per input: the answer, its probabilities, the "
                                                            "strongest units for and against, the method's settings")


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=2000)


class ReviewDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "override", "out-of-scope", "escalate"]
    label: str | None = Field(None, max_length=200, description="the corrected label (override only)")
    note: str = Field("", max_length=2000)


def _request_model(service: Service) -> type[BaseModel]:
    cfg = service.config
    if service.backend.kind == "text":
        item: Any = Annotated[str, Field(min_length=1, max_length=cfg.max_text_chars)]
    else:
        width = 1
        for s in getattr(service.backend, "shape", ()) or ():
            width *= int(s)
        item = Annotated[list[Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]],
                         Field(min_length=width, max_length=width)]
    return create_model("PredictRequest", __config__=ConfigDict(extra="forbid"),
                        inputs=(Annotated[list[item], Field(min_length=1, max_length=cfg.max_inputs)], ...))


EXPLAIN_MAX_INPUTS = 8  # an explanation costs up to hundreds of forward passes


def _explain_model(service: Service) -> type[BaseModel]:
    inputs: Any = _request_model(service).model_fields["inputs"].annotation
    method: Any = Literal["gradient_x_input", "integrated_gradients", "occlusion"]
    return create_model("ExplainRequest", __config__=ConfigDict(extra="forbid"),
                        inputs=(inputs, Field(min_length=1, max_length=EXPLAIN_MAX_INPUTS)),
                        method=(method, "gradient_x_input"))


def create_app(service: Service, users: Any) -> Any:
    """The FastAPI app over ``service``; ``users`` is the :class:`~nnforge.govern.users.UserStore` whose tokens
    it accepts. Starting and stopping the app starts and stops the service."""
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI, HTTPException, Request, Response
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    from nnforge.govern.users import AccessDenied, require

    tokens = TokenCache(users)
    bearer = HTTPBearer(auto_error=False, description="NAME:SECRET from 'nnforge users add NAME --role caller'")
    metrics = service.metrics

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="nnforge serve", version="1", lifespan=lifespan,
                  description=f"run {service.run}, variant {service.variant}, labels {service.labels}")
    Req = _request_model(service)

    def who(action: str) -> Callable[..., Any]:
        def dep(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Any:
            try:
                return require(tokens.authenticate(cred.credentials if cred else None), action)
            except AccessDenied as exc:
                status = 403 if cred is not None and "needs the" in str(exc) else 401
                raise HTTPException(status, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        return dep

    @app.exception_handler(Halted)
    async def _halted(_: Request, exc: Halted) -> JSONResponse:
        if metrics is not None:
            metrics.requests.labels(outcome="halted").inc()
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        if metrics is not None:
            metrics.requests.labels(outcome="busy").inc()
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "1"})

    @app.exception_handler(TimeoutError)
    async def _timeout(_: Request, exc: TimeoutError) -> JSONResponse:
        if metrics is not None:
            metrics.requests.labels(outcome="timeout").inc()
        return JSONResponse({"detail": f"no decision within {service.config.request_timeout_s} s"}, status_code=503)

    @app.post("/predict", response_model=PredictResponse, responses={
        401: {"description": "no or a wrong token"}, 403: {"description": "role too low"},
        413: {"description": "body too large"}, 429: {"description": "queue full"},
        503: {"description": "halted or timed out"}})
    async def predict(body: Req, user: Annotated[Any, Depends(who("predict"))]) -> dict[str, Any]:  # type: ignore[valid-type]
        request, decisions = await service.predict(list(body.inputs), user.name)  # type: ignore[attr-defined]
        if metrics is not None:
            metrics.requests.labels(outcome="ok").inc()
        return {"request": request, "predictions": [d.to_dict() for d in decisions], "run": service.run, "variant": service.variant,
                "backend": service.backend.name}

    if service.explainer is not None:  # only a server with a PyTorch model to explain with offers /explain
        ExplainReq = _explain_model(service)

        @app.post("/explain", response_model=ExplainResponse, responses={
            401: {"description": "no or a wrong token"}, 403: {"description": "role too low"},
            422: {"description": "inputs the model cannot explain"},
            429: {"description": "another explanation is running"}, 503: {"description": "halted"}})
        def explain(body: ExplainReq, user: Annotated[Any, Depends(who("predict"))]) -> dict[str, Any]:  # type: ignore[valid-type]
            """Why the model answers each input as it does (recorded as model.explained with the caller)."""
            from nnforge.errors import DataError, ModelError

            try:
                out = service.explain(list(body.inputs), body.method, user)  # type: ignore[attr-defined]
            except (DataError, ModelError) as exc:
                raise HTTPException(422, str(exc)) from None
            return {"run": service.run, "variant": service.variant, "explanations": out}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "halted" if service.halted else "ok", "halted": service.halted, "run": service.run,
                "variant": service.variant, "backend": service.backend.name, "labels": service.labels,
                "queue": service.queue_depth(), "input": service.backend.kind, **service.facts}

    @app.get("/metrics")
    def metrics_() -> Response:
        if metrics is None:
            raise HTTPException(404, "metrics are off")
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.post("/control/halt")
    def halt(body: ControlRequest, user: Annotated[Any, Depends(who("halt"))]) -> dict[str, Any]:
        return service.halt(user, body.reason)

    @app.post("/control/resume")
    def resume(body: ControlRequest, user: Annotated[Any, Depends(who("halt"))]) -> dict[str, Any]:
        return service.resume(user, body.reason)

    @app.get("/review")
    def review_list(user: Annotated[Any, Depends(who("review"))],
                    status: Literal["open", "approved", "overridden", "out_of_scope", "escalated"] | None = None
                    ) -> list[dict[str, Any]]:
        from nnforge.govern.review import ReviewQueue

        with ReviewQueue.open(service.ledger_location, actor=user.name) as q:
            return [i.to_dict() for i in q.list(status) if i.run == service.run]

    @app.post("/review/{item_id}")
    def review_decide(item_id: Annotated[int, Field(ge=1, le=2**62)], body: ReviewDecision,
                      user: Annotated[Any, Depends(who("review"))]) -> dict[str, Any]:
        from nnforge.govern.review import ReviewQueue

        if (body.decision == "override") != (body.label is not None):
            raise HTTPException(422, "give 'label' with an override, and only with one")
        try:
            with ReviewQueue.open(service.ledger_location, actor=user.name) as q:
                item = q.get(item_id)
                if item.run != service.run:
                    raise HTTPException(404, f"review item {item_id} is not this server's run")
                done = q.decide(item_id, reviewer=user, decision=body.decision, override_label=body.label,
                                note=body.note, allowed_labels=service.labels)
        except AccessDenied as exc:
            raise HTTPException(403, str(exc)) from None
        except (ConfigError, IntegrityError) as exc:
            raise HTTPException(404 if "no such item" in str(exc) else 409, str(exc)) from None
        return done.to_dict()

    app.add_middleware(_BodyLimit, limit=service.config.max_body_bytes)
    return app
