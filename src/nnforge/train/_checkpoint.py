"""Training checkpoints: one safetensors file per checkpoint, written atomically, never pickled.

``<checkpoint_dir>/step-000020.safetensors`` holds every tensor (model under ``model/``, optimizer state
under ``optim/``, RNG states under ``rng/``) and, in its header metadata under ``nnforge.train``, one JSON
document with the rest: step, epoch position, scheduler state, the optimizer's non-tensor state and param
groups, numpy and Python RNG states, early-stopping state and the config. A file is written to a temporary
name and moved into place with ``os.replace``, so a crash never leaves a half-written checkpoint; the
temporary file a killed save leaves behind is deleted when training next starts in that folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnforge.errors import IntegrityError, check_output_path

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "checkpoint_path", "checkpoint_step",
           "remove_stale_temp_files"]

META_KEY = "nnforge.train"
FORMAT = "nnforge.train.checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.safetensors$")
_TEMP = re.compile(r"^\.step-\d+\.safetensors\.[A-Za-z0-9_]+\.tmp$")  # save_checkpoint's mkstemp names


def checkpoint_path(directory: str | os.PathLike[str], step: int) -> Path:
    """Where the checkpoint of ``step`` lives in ``directory``."""
    return Path(directory) / f"step-{step:06d}.safetensors"


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's file name (-1 for other names)."""
    m = _NAME.match(path.name)
    return int(m.group(1)) if m else -1


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a save killed mid-write left in ``directory`` (only names of
    :func:`save_checkpoint`'s own pattern, ``.step-NNNNNN.safetensors.XXXX.tmp``); return them."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(".step-*.safetensors.*.tmp") if _TEMP.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The checkpoint with the highest step in ``directory`` (None when there is none)."""
    found = [p for p in Path(directory).glob("step-*.safetensors") if checkpoint_step(p) >= 0]
    return max(found, key=checkpoint_step) if found else None


# --- flattening nested state into tensors + JSON ---------------------------------------------------------

def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of ``obj``; tensors go to ``tensors`` under ``key`` and leave a reference behind."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, f"{key}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__":
                [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise IntegrityError(f"cannot store a {type(obj).__name__} at {key!r} in a checkpoint (tensors, numbers, "
                         "strings, lists and dicts only)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__list__" in obj:
            return [_decode(v, tensors) for v in obj["__list__"]]
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def _model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """Put the model's state in ``tensors``; tied tensors are stored once and listed as aliases."""
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, torch.dtype, tuple[int, ...]], str] = {}
    for name, value in model.state_dict().items():
        ident = (value.data_ptr(), value.numel(), value.dtype, tuple(value.shape))
        if value.numel() and ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        tensors[f"model/{name}"] = value.detach().cpu().contiguous()
    return aliases


# --- RNG states -------------------------------------------------------------------------------------------

def _rng_state(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    tensors["rng/torch"] = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for i, s in enumerate(cuda):
        tensors[f"rng/cuda/{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {"cuda_devices": len(cuda), "numpy": [kind, np.asarray(keys).tolist(), pos, has_gauss, cached],
            "python": _encode(random.getstate(), "python", {})}


def _restore_rng(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    n = int(meta["cuda_devices"])
    if n and torch.cuda.is_available() and torch.cuda.device_count() == n:
        torch.cuda.set_rng_state_all([tensors[f"rng/cuda/{i}"] for i in range(n)])
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(_decode(meta["python"], {}))


# --- save / load ------------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike[str], *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, extra: dict[str, Any]) -> Path:
    """Write model, optimizer, scheduler, RNG states and ``extra`` (JSON-able) to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "model_aliases": _model_tensors(model, tensors),
        "optimizer_type": type(optimizer).__name__,
        "optimizer": _encode(optimizer.state_dict(), "optim", tensors),
        "scheduler": _encode(scheduler.state_dict(), "sched", tensors),
        "rng": _rng_state(tensors),
        **extra,
    }
    p = Path(path)
    check_output_path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)})
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    if not path.is_file():
        raise IntegrityError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise IntegrityError(f"{path}: not a readable checkpoint ({exc}); use an older one") from None
    if raw is None:
        raise IntegrityError(f"{path}: has no {META_KEY} metadata; it is not an nnforge training checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{path}: its {META_KEY} metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise IntegrityError(f"{path}: its {META_KEY} metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise IntegrityError(f"{path}: metadata format {meta.get('format')!r} is not an nnforge training checkpoint")
    if meta.get("version") != FORMAT_VERSION:
        raise IntegrityError(f"{path}: checkpoint format version {meta.get('version')!r}; "
                             f"this nnforge reads version {FORMAT_VERSION}")
    return tensors, meta


def _param_like(shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    rows = shape[0] if shape else 1
    flat = (rows, int(torch.Size(shape).numel()) // rows if rows else 0)
    return {tuple(shape), flat} if len(shape) > 2 else {tuple(shape)}


# torch.optim's own optimizers (the loop's default AdamW, a caller's SGD with momentum) keep these per parameter
# with its shape; an optimizer made by nnforge.optim.build_optimizer declares its own as ``state_shapes``
_TORCH_STATE = {key: _param_like for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")}


def _check_optimizer_shapes(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Refuse optimizer state whose tensors cannot belong to their parameter (a damaged or edited file
    would otherwise load and fail at the next step inside torch).

    The shapes come from the optimizer: ``optimizer.state_shapes`` maps a state key to ``rule(param_shape)
    -> allowed shapes`` (each optimizer registers its own in nnforge.optim); without it, torch's keys.
    """
    rules = getattr(optimizer, "state_shapes", None)
    if not isinstance(rules, dict):
        rules = _TORCH_STATE
    names = {id(p): n for n, p in model.named_parameters()}
    for param, st in optimizer.state.items():
        if not isinstance(param, torch.Tensor) or not isinstance(st, dict):
            continue
        for key, value in st.items():
            rule = rules.get(key)
            if rule is None or not isinstance(value, torch.Tensor):
                continue
            if tuple(value.shape) not in {tuple(s) for s in rule(tuple(param.shape))}:
                raise IntegrityError(f"{path}: damaged checkpoint: optimizer state {key!r} of parameter "
                                     f"{names.get(id(param), '?')!r} has shape {tuple(value.shape)}, which does not "
                                     f"fit the parameter's shape {tuple(param.shape)}")


def load_checkpoint(path: str | os.PathLike[str], *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``, ``scheduler``, the global RNGs).

    Returns the JSON document (step, epoch position, early-stopping state, config, …).

    Raises:
        IntegrityError: the file is missing, damaged, or does not fit the model.
    """
    p = Path(path)
    tensors, meta = _read(p)
    try:
        state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        for name, target in meta["model_aliases"].items():
            state[name] = state[target]
        optim_state: Any = _decode(meta["optimizer"], tensors) if optimizer is not None else None
        sched_state: Any = _decode(meta["scheduler"], tensors) if scheduler is not None else None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"{p}: damaged checkpoint metadata ({type(exc).__name__}: {exc})") from None
    written_by = meta.get("optimizer_type")
    if optimizer is not None and written_by is not None and written_by != type(optimizer).__name__:
        raise IntegrityError(f"{p}: the checkpoint holds the state of a {written_by} optimizer; this run builds a "
                             f"{type(optimizer).__name__} (resume with the optimizer it was trained with)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise IntegrityError(f"{p}: the checkpoint does not fit this model: {exc}") from None
    try:
        if optimizer is not None:
            optimizer.load_state_dict(optim_state)
            _check_optimizer_shapes(p, model, optimizer)
        if scheduler is not None:
            scheduler.load_state_dict(sched_state)
        if restore_rng:
            _restore_rng(meta["rng"], tensors)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        raise IntegrityError(f"{p}: the checkpoint's optimizer, scheduler or RNG state does not load "
                             f"({type(exc).__name__}: {exc})") from None
    return meta
