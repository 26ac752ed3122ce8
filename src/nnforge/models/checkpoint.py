"""Weights on disk: safetensors only, with the JSON spec needed to rebuild the module.

The spec (architecture or pretrained source, head size, label names, transforms applied) is stored in
the safetensors header under ``nnforge.spec``. Loading never unpickles anything; a damaged file is an
:class:`~nnforge.errors.IntegrityError` naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnforge.errors import IntegrityError, check_output_path, follow_umask

__all__ = ["save_weights", "load_weights", "read_spec"]

SPEC_KEY = "nnforge.spec"


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, torch.dtype]] = set()
    for k, v in model.state_dict().items():
        if v is None:
            continue
        key = (v.data_ptr(), v.numel(), v.dtype)
        if v.numel() and key in seen:  # tied weights are stored once; the module ties them again
            continue
        seen.add(key)
        out[k] = v.detach().contiguous().cpu()
    return out


def save_weights(model: nn.Module, path: str | os.PathLike[str], spec: dict[str, Any]) -> None:
    """Write the module's state (parameters and buffers) and ``spec`` to ``path`` atomically."""
    from safetensors.torch import save_file

    p = Path(path)
    check_output_path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_file(_tensors(model), tmp, metadata={SPEC_KEY: json.dumps(spec, sort_keys=True)})
        follow_umask(tmp)  # safetensors writes 0600
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The spec stored in a safetensors file's header."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise IntegrityError(f"{p}: weights file not found")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise IntegrityError(f"{p}: not a readable safetensors file ({exc}). Re-create it from its run.") from None
    try:
        return json.loads(meta.get(SPEC_KEY, "{}"))
    except json.JSONDecodeError:
        raise IntegrityError(f"{p}: the {SPEC_KEY} metadata is not valid JSON") from None


def load_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and spec from a safetensors file (no pickle)."""
    from safetensors.torch import load_file

    spec = read_spec(path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise IntegrityError(f"{path}: the tensor data is damaged ({exc}). Re-create it from its run.") from None
    return tensors, spec
