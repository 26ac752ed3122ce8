"""What runs the model behind the server: PyTorch (nnforge's quantized layers or its native int8 encoder inside) or
ONNX Runtime, each giving logits and, where the OOD guard reads them, the features it was calibrated on.

The server picks among candidates by measured speed (:func:`choose_backend`): each runs the same real inputs at
batch 1 and at the server's ``max_batch``, in interleaved rounds, and the fastest at ``max_batch`` (the batch a
busy server runs) wins; the timings go to ``/health`` and the ledger.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from nnforge.errors import ConfigError, DataError

__all__ = ["Backend", "BackendOutput", "TorchBackend", "OnnxBackend", "choose_backend", "input_kind",
           "onnx_backend"]

InputKind = Literal["text", "vector"]


@dataclass
class BackendOutput:
    """Logits ``(N, C)`` and the named inputs an OOD detector reads (``features``, ``logits``, ...)."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class Backend(Protocol):
    """Runs a batch of validated inputs: texts (``kind == "text"``) or flat float vectors (``"vector"``)."""

    name: str
    kind: InputKind
    provides: tuple[str, ...]  # the detector inputs it returns

    def __call__(self, inputs: Sequence[Any]) -> BackendOutput: ...


def input_kind(model: nn.Module) -> InputKind:
    """``text`` for a text classifier (it tokenizes), ``vector`` for a model over fixed-size float inputs."""
    return "text" if hasattr(model, "tokenizer") and hasattr(model, "tokenize") else "vector"


def _vector_shape(model: nn.Module, shape: Sequence[int] | None = None) -> tuple[int, ...]:
    shape = shape if shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError(f"{type(model).__name__}: a served non-text model needs its input shape (pass "
                          "shape=..., e.g. (64,) for the digits, or give the model an 'input_shape' attribute)")
    return tuple(int(s) for s in shape)


class TorchBackend:
    """A PyTorch model in eval mode under ``torch.inference_mode``. A text classifier returns its pooled
    features and logits from one pass (what :class:`nnforge.explain.TextFeatures` computes); a vector model
    (``input_shape`` attribute) its logits."""

    def __init__(self, model: nn.Module, name: str = "torch", *, shape: Sequence[int] | None = None) -> None:
        self.name = name
        self.model = model.eval()
        self.kind = input_kind(model)
        self.provides: tuple[str, ...] = ("features", "logits", "tokens") if self.kind == "text" else ("logits",)
        if self.kind == "text":
            from nnforge.explain import TextFeatures

            self._text = TextFeatures(model, batch_size=1024)
        else:
            self.shape = _vector_shape(model, shape)

    @torch.inference_mode()
    def __call__(self, inputs: Sequence[Any]) -> BackendOutput:
        if self.kind == "text":
            out = self._text(list(inputs))
            return BackendOutput(out["logits"], out)
        x = torch.as_tensor(inputs, dtype=torch.float32).reshape(len(inputs), *self.shape)
        logits = self.model(x).float()
        return BackendOutput(logits, {"logits": logits})


class _TextGraph(nn.Module):
    """A text classifier as one graph with two outputs: logits and the L2-normalised pooled features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m: Any = self.model
        pooled = nn.functional.normalize(m.pooled(input_ids, attention_mask), dim=-1)
        return m.head(pooled), pooled


class OnnxBackend:
    """An ONNX Runtime session (one per model, intra-op threads as torch's, spinning off: the server shares the
    CPU with its HTTP workers). Text goes through the model's own tokenizer first."""

    def __init__(self, path: str | os.PathLike[str], *, kind: InputKind, tokenizer: Any = None,
                 shape: tuple[int, ...] | None = None, name: str = "onnx", threads: int | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.name, self.kind, self.tokenizer, self.shape = name, kind, tokenizer, shape
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.provides = tuple(n for n in ("logits", "features") if n in self.outputs)
        if kind == "text" and tokenizer is None:
            raise ConfigError("OnnxBackend: a text model needs its tokenizer")

    def __call__(self, inputs: Sequence[Any]) -> BackendOutput:
        import numpy as np

        if self.kind == "text":
            b = self.tokenizer(list(inputs), padding=True, truncation=True, return_tensors="np")
            feeds = {"input_ids": b["input_ids"].astype(np.int64), "attention_mask": b["attention_mask"].astype(np.int64)}
        else:
            shape = self.shape or ()
            feeds = {self.session.get_inputs()[0].name: np.asarray(inputs, dtype=np.float32).reshape(len(inputs), *shape)}
        outs = dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).float() for k, v in outs.items()}
        return BackendOutput(tensors["logits"], tensors)


def onnx_backend(model: nn.Module, folder: str | os.PathLike[str] | None = None, *,
                 example: Sequence[Any], name: str = "onnx", shape: Sequence[int] | None = None) -> OnnxBackend:
    """Export ``model`` with :func:`nnforge.deploy.onnx.export_onnx` (a text classifier with a ``features``
    output beside ``logits``) into ``folder`` (a temporary one by default) and open it in ONNX Runtime."""
    from nnforge.deploy.onnx import export_onnx

    kind = input_kind(model)
    out = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="nnforge-serve-"))
    path = out / "model.onnx"
    model = model.eval()
    if kind == "text":
        m: Any = model
        b = m.tokenize(list(example)[:2])
        ids, mask = b["input_ids"].cpu(), b["attention_mask"].cpu()
        export_onnx(_TextGraph(model), path, (ids, mask), input_names=["input_ids", "attention_mask"],
                    output_names=["logits", "features"],
                    dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                  "logits": {0: "batch"}, "features": {0: "batch"}})
        return OnnxBackend(path, kind="text", tokenizer=m.tokenizer, name=name)
    shape = _vector_shape(model, shape)
    x = torch.as_tensor(list(example)[:2], dtype=torch.float32).reshape(-1, *shape)
    export_onnx(model, path, (x,), input_names=["x"], output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return OnnxBackend(path, kind="vector", shape=shape, name=name)


@dataclass
class Choice:
    """The chosen backend and every candidate's median seconds per call at batch 1 and at ``max_batch``."""

    backend: Backend
    timings: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend.name, "timings_ms": self.timings}


def choose_backend(candidates: Sequence[Backend], sample: Sequence[Any], *, max_batch: int, repeats: int = 5,
                   needs: Sequence[str] = (), clock: Callable[[], float] = time.perf_counter) -> Choice:
    """The candidate fastest at ``max_batch`` on real ``sample`` inputs, among those that return what the OOD
    guard ``needs``; rounds interleave the candidates so a busy CPU slows them all alike.

    Raises:
        ConfigError: no candidate, or none returns the guard's inputs.
    """
    usable = [c for c in candidates if all(n in c.provides for n in needs)]
    if not usable:
        raise ConfigError(f"no backend returns what the OOD guard reads ({list(needs)}); candidates: "
                          f"{ {c.name: list(c.provides) for c in candidates} }")
    if not sample:
        raise DataError("choose_backend: no sample inputs to time the backends on")
    big = [sample[i % len(sample)] for i in range(max_batch)]
    times: dict[str, dict[str, list[float]]] = {c.name: {"batch_1": [], f"batch_{max_batch}": []} for c in usable}
    for c in usable:  # warm-up: first calls allocate, JIT and plan
        c(big)
        c(big[:1])
    for _ in range(repeats):
        for c in usable:
            for key, batch in (("batch_1", big[:1]), (f"batch_{max_batch}", big)):
                t0 = clock()
                c(batch)
                times[c.name][key].append(clock() - t0)
    medians: dict[str, dict[str, Any]] = {n: {k: round(statistics.median(v) * 1000, 3) for k, v in d.items()} for n, d in times.items()}
    best = min(usable, key=lambda c: medians[c.name][f"batch_{max_batch}"])
    for c in candidates:
        if c not in usable:
            medians[c.name] = {"skipped": f"does not return {[n for n in needs if n not in c.provides]}"}
    return Choice(best, medians)
