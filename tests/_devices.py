"""``meta`` as a stand-in for a GPU, with a GPU's device rules (importable because tests/ holds conftest.py).

The ``meta`` device already refuses an op that mixes a meta tensor with a non-scalar CPU one, which is what a
CUDA run refuses. It differs from CUDA in two ways that :class:`GpuLikeMeta` evens out:

- meta refuses ``.item()``/``float()``/``bool()`` and copies to the CPU (it holds no values), which on a GPU
  are legal syncs: under the mode numbers answer 1 and truth values False (checks such as
  ``if bad.any(): raise`` pass; the numbers mean nothing), and ``bincount`` (whose size depends on the
  values) returns ``minlength`` bins;
- meta accepts writing into a CPU tensor from meta inputs (``cpu_scalar += meta_scalar``), which CUDA
  refuses ("Trying to pass too many CPU scalars to CUDA kernel", pytorch#40986): under the mode that raises.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default, torch.ops.aten._copy_from.default,
           torch.ops.aten._copy_from_and_resize.default}


class GpuLikeMeta(TorchDispatchMode):
    """Run meta-device code as if it were on a GPU (see the module docstring)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            t = args[0]
            return False if t.dtype == torch.bool else 1.0 if t.is_floating_point() else 1
        if func is torch.ops.aten.bincount.default and args[0].device.type == "meta":  # data-dependent size
            return torch.zeros(kwargs.get("minlength", args[2] if len(args) > 2 else 0), dtype=torch.long,
                               device="meta")
        if func is torch.ops.aten._to_copy.default and args[0].device.type == "meta" \
                and torch.device(kwargs.get("device") or "meta").type == "cpu":
            return torch.ones(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        if func is torch.ops.aten.copy_.default and args[0].device.type == "cpu" and args[1].device.type == "meta":
            return args[0].fill_(1)
        if func not in _COPIES:
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if any(t.device.type == "meta" for t in tensors):
                for arg, value in zip(func._schema.arguments, args, strict=False):
                    written = arg.alias_info is not None and arg.alias_info.is_write
                    for t in tree_leaves(value):
                        if written and isinstance(t, torch.Tensor) and t.device.type == "cpu":
                            raise RuntimeError(f"{func}: writes into a CPU tensor from meta inputs "
                                               "(a GPU refuses this)")
        return func(*args, **kwargs)
