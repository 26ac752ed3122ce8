"""``meta`` as a stand-in for a GPU, with a GPU's device rules (importable because tests/ holds conftest.py).

The ``meta`` device already refuses an op that mixes a meta tensor with a non-scalar CPU one, which is what a
CUDA run refuses. It differs from CUDA in two ways that :class:`GpuLikeMeta` evens out:

- meta refuses ``.item()``/``float()``/``bool()`` and copies to the CPU (it holds no values), which on a GPU
  are legal syncs: under the mode numbers answer 1 and truth values False (checks such as
  ``if bad.any(): raise`` pass; the numbers mean nothing), and ``bincount`` (whose size depends on the
  values) returns ``minlength`` bins, and ``nonzero`` (boolean-mask indexing too) selects every element;
- meta accepts writing into a CPU tensor from meta inputs (``cpu_scalar += meta_scalar``, pytorch#40986) and
  some ops with CPU inputs among meta ones (``isin``, ``gather``, ``bucketize``), which CUDA refuses: under the
  mode they raise (CPU inputs may only be 0-dim, or the integer indices of advanced indexing).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx.experimental._config
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default, torch.ops.aten._copy_from.default,
           torch.ops.aten._copy_from_and_resize.default}
# advanced indexing takes CPU integer index tensors for GPU tensors
_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
             torch.ops.aten._index_put_impl_.default}


# copies to another device: _to_copy, or (under inference_mode, which skips that decomposition) aten.to itself
_TO = {torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype_layout, torch.ops.aten.to.device}


def _target(func: Any, args: Any, kwargs: dict[str, Any]) -> str:
    device = args[1] if func is torch.ops.aten.to.device else kwargs.get("device")
    return torch.device(device or "meta").type


class GpuLikeMeta(TorchDispatchMode):
    """Run meta-device code as if it were on a GPU (see the module docstring)."""

    def __enter__(self) -> GpuLikeMeta:
        # nonzero's size depends on the values (boolean-mask indexing runs it too): assume all are selected
        self._nonzero = torch.fx.experimental._config.meta_nonzero_assume_all_nonzero
        torch.fx.experimental._config.meta_nonzero_assume_all_nonzero = True
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        torch.fx.experimental._config.meta_nonzero_assume_all_nonzero = self._nonzero
        super().__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            t = args[0]
            return False if t.dtype == torch.bool else 1.0 if t.is_floating_point() else 1
        if func is torch.ops.aten.bincount.default and args[0].device.type == "meta":  # data-dependent size
            return torch.zeros(kwargs.get("minlength", args[2] if len(args) > 2 else 0), dtype=torch.long,
                               device="meta")
        if func in _TO and args[0].device.type == "meta" and _target(func, args, kwargs) == "cpu":
            return torch.ones(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        if func is torch.ops.aten.copy_.default and args[0].device.type == "cpu" and args[1].device.type == "meta":
            return args[0].fill_(1)
        if func not in _COPIES:
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if any(t.device.type == "meta" for t in tensors):
                self._check_cpu_operands(func, args, kwargs)
        return func(*args, **kwargs)

    @staticmethod
    def _check_cpu_operands(func: Any, args: Any, kwargs: Any) -> None:
        """CUDA's rule for CPU tensors among GPU operands: only 0-dim inputs (and integer indices of advanced
        indexing) may stay on the CPU; a CPU output, or any other CPU input, is refused."""
        named = list(zip(func._schema.arguments, args, strict=False))
        named += [(a, kwargs[a.name]) for a in func._schema.arguments if a.name in kwargs]
        for arg, value in named:
            written = arg.alias_info is not None and arg.alias_info.is_write
            for t in tree_leaves(value):
                if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                    continue
                if written:
                    raise RuntimeError(f"{func}: writes into a CPU tensor from meta inputs (a GPU refuses this)")
                if t.dim() and not (func in _INDEXING and arg.name == "indices"):
                    raise RuntimeError(f"{func}: argument {arg.name!r} is a CPU tensor of shape {tuple(t.shape)} "
                                       "among meta ones (a GPU refuses this)")
