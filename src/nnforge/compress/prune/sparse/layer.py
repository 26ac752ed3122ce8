"""``SparseLinear``: a pruned Linear stored in a sparse format, executed sparse only where measured faster.

The weight lives as a :class:`~nnforge.compress.prune.kernels.SparseWeight` registered as buffers, so
``state_dict`` / safetensors hold only what pruning kept. Beside it the layer keeps, per measured batch size,
whether the sparse kernel was faster than the dense execution of the same arithmetic (the ``execution``
buffer, saved with the weights), and runs each call accordingly: sparse where that verdict says faster, dense
elsewhere (from a dense copy rebuilt in memory on first use, never saved: then sparsity saves file size, not
time or memory, and :attr:`SparseLinear.verdict` says so).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.compress.prune.kernels import SparseWeight, sparse_format, sparse_mm
from nnforge.compress.prune.kernels._format import SPARSE_LAYOUT_VERSION, check_shapes, sparse_format_of_code
from nnforge.compress.quantize.kernels import PackedWeight, from_int, qgemv

__all__ = ["SparseLinear"]

_WEIGHT_BUFFERS = ("values", "indices", "row_ptr", "scales")


def _empty(fmt: str, n: int, k: int) -> SparseWeight:
    """Zero tensors of a format's shapes (CSR with no stored values: loading adopts the saved lengths)."""
    spec = sparse_format(fmt)
    scales = torch.ones(n) if spec.values == "int8" else None
    if spec.pattern == "2:4":
        kp = spec.padded_k(k)
        return SparseWeight(fmt, torch.zeros(n, kp // 2, dtype=spec.value_dtype), torch.zeros(n, kp // 8, dtype=torch.uint8),
                            None, scales, n, k)
    return SparseWeight(fmt, torch.zeros(0, dtype=spec.value_dtype), torch.zeros(0, dtype=torch.int16),
                        torch.zeros(n + 1, dtype=torch.int64), scales, n, k)


class SparseLinear(nn.Module):
    """``y = x @ Wᵀ + b`` with ``W`` stored sparse (2:4 or CSR, fp32 or int8 values).

    A call of ``m`` rows runs the sparse kernel if the verdict measured at the smallest batch size ``>= m``
    says sparse is faster (``execution`` buffer), otherwise the dense execution of the same arithmetic: fp32
    ``F.linear`` for fp32 formats, the dense int8 kernel (:func:`~nnforge.compress.quantize.kernels.qgemv`,
    the same int8 codes and scales) for int8 formats. Beyond the largest measured batch size it runs dense,
    and off the CPU always (the kernels and their verdicts are the CPU's).
    fp32 formats: sparse and dense differ only by float summation order (within 1e-5 of a row's largest
    output); int8 formats: both sum the same exact integer products.
    """

    transform_note = ("stored sparse by sparsify, left as is (quantize or prune before sparsify; its int8 formats "
                      "quantize the kept values)")

    bias: torch.Tensor | None
    execution: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool, fmt: str,
                 batch_sizes: tuple[int, ...] = (1,)) -> None:
        super().__init__()
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        w = _empty(fmt, out_features, in_features)
        for name, t in w.state_dict().items():
            self.register_buffer(name, t)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        # what the bytes mean, saved with them: a file of another format never loads silently
        self.register_buffer("layout", torch.tensor([SPARSE_LAYOUT_VERSION, sparse_format(fmt).code], dtype=torch.int32))
        # (batch size, 1 sparse / 0 dense) per measured batch size; dense everywhere until measured
        sizes = sorted(set(batch_sizes))
        self.register_buffer("execution", torch.tensor([[b, 0] for b in sizes], dtype=torch.int32).reshape(-1, 2))
        self.verdicts: dict[int, dict[str, Any]] = {}  # the timings behind ``execution`` (when measured here)
        self.forced: str | None = None
        self._dense: tuple[Any, Any] | None = None  # (values tensor it was built from, dense weight or packed int8)
        self._view: tuple[tuple[int, ...], SparseWeight] | None = None

    @classmethod
    def from_sparse(cls, w: SparseWeight, bias: torch.Tensor | None = None, *,
                    batch_sizes: tuple[int, ...] = (1,)) -> SparseLinear:
        m = cls(w.K, w.N, bias is not None, w.fmt, batch_sizes)
        m.set_sparse(w)
        if bias is not None and m.bias is not None and not bias.is_meta:
            m.bias.copy_(bias.detach().float())
        return m

    def set_sparse(self, w: SparseWeight) -> None:
        if (w.fmt, w.N, w.K) != (self.fmt, self.out_features, self.in_features):
            raise ValueError(f"sparse weight {w.fmt} {w.N}x{w.K} does not fit this layer "
                             f"({self.fmt} {self.out_features}x{self.in_features})")
        for name, t in w.state_dict().items():
            self._buffers[name] = t
        self._dense = None

    @property
    def sparse(self) -> SparseWeight:
        """The :class:`SparseWeight` view of the buffers (rebuilt, and checked, when a buffer was replaced)."""
        b = self._buffers
        key = tuple(id(b.get(name)) for name in _WEIGHT_BUFFERS)
        if self._view is None or self._view[0] != key:
            w = SparseWeight(self.fmt, b["values"], b["indices"], b.get("row_ptr"), b.get("scales"),  # type: ignore[arg-type]
                             self.out_features, self.in_features)
            self._view = (key, w)
        return self._view[1]

    # ------------------------------------------------------------ execution

    def runs_sparse(self, rows: int) -> bool:
        """Whether a call of ``rows`` rows runs the sparse kernel (see the class docstring)."""
        return _decide(tuple(map(tuple, self.execution.tolist())), rows)

    def _dense_path(self) -> Any:
        values = self.get_buffer("values")
        if self._dense is None or self._dense[0] is not values:
            w = self.sparse
            if w.spec.values == "fp32":
                dense: Any = w.dense()
            else:  # the same int8 codes and fp16-exact row scales in the dense int8 kernel's layout
                assert w.scales is not None  # noqa: S101 - int8 formats carry scales
                codes = torch.round(w.dense() / w.scales[:, None]).to(torch.int8).cpu()
                p = from_int(codes, w.scales[:, None].cpu(), "int8", None)  # packs on the CPU; qgemv runs anywhere
                dense = PackedWeight(p.fmt, p.data.to(values.device), p.scales.to(values.device), None, p.N, p.K, None)
            self._dense = (values, dense)
        return self._dense[1]

    def dense_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """The dense execution: ``F.linear`` on the dense fp32 weight, or the dense int8 kernel."""
        d = self._dense_path()
        if isinstance(d, torch.Tensor):
            return F.linear(x, d.to(x.dtype))
        return qgemv(x, d).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        rows = x.numel() // self.in_features if x.dim() else 0
        # the kernels and their verdicts are the CPU's; elsewhere (a GPU) the dense execution runs
        sparse = x.device.type == "cpu" and self.runs_sparse(rows)
        y = sparse_mm(x, self.sparse).to(dtype) if sparse else self.dense_matmul(x)
        return y + self.bias.to(dtype) if self.bias is not None else y

    def measure(self, repeats: int = 20, alpha: float = 0.05) -> dict[int, dict[str, Any]]:
        """Time sparse against dense execution, interleaved, at every batch size of ``execution``; set it.

        ``verdicts[b]`` = ``{"sparse_ms", "dense_ms", "speedup", "speedup_ci", "p_value", "verdict"}``
        (:func:`nnforge.hardware.time_verdict`; warm: the weights stay in cache between calls).
        """
        from nnforge.hardware import time_verdict

        w = self.sparse
        rows = []
        with torch.inference_mode():
            for b, _ in self.execution.tolist():
                x = torch.randn(b, self.in_features, generator=torch.Generator().manual_seed(b))  # global RNG untouched
                v = time_verdict(functools.partial(sparse_mm, x, w), functools.partial(self.dense_matmul, x),
                                 warmup=1, repeats=repeats, alpha=alpha)
                self.verdicts[b] = {"sparse_ms": v.pop("candidate_ms"), "dense_ms": v.pop("baseline_ms"), **v}
                rows.append([b, int(v["verdict"] == "faster")])
        self.execution = torch.tensor(rows, dtype=torch.int32).reshape(-1, 2)
        self.forced = None
        return self.verdicts

    def force(self, sparse: bool) -> None:
        """Run every batch size sparse (``True``) or dense, with no timing (the verdict says it was forced)."""
        self.execution = torch.tensor([[b, int(sparse)] for b, _ in self.execution.tolist()],
                                      dtype=torch.int32).reshape(-1, 2)
        self.forced = "sparse" if sparse else "dense"

    @property
    def verdict(self) -> str:
        """In words, per measured batch size: sparse or dense, and why (what the report shows)."""
        parts = []
        for b, code in self.execution.tolist():
            v = self.verdicts.get(b)
            if self.forced:
                parts.append(f"batch {b}: {self.forced} (forced, not timed)")
            elif v is None:
                parts.append(f"batch {b}: {'sparse (measured faster)' if code else 'dense (sparse not measured faster)'}")
            else:
                lo, hi = v["speedup_ci"]
                what = "sparse" if code else "dense"
                parts.append(f"batch {b}: {what} (sparse {v['speedup']:.2f}x dense [{lo:.2f}, {hi:.2f}], {v['verdict']})")
        text = "; ".join(parts) or "no batch size measured: dense"
        if not int(self.execution[:, 1].sum()):
            text += ": sparsity saves file size here, not time (executed dense from a dense copy in memory)"
        return text

    # ------------------------------------------------------------ loading

    def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        saved = state_dict.get(prefix + "layout")
        where = prefix.rstrip(".") or "the sparse layer"
        if saved is not None:
            v = [int(t) for t in saved.reshape(-1).tolist()]
            spec = sparse_format_of_code(v[1]) if len(v) == 2 else None
            if v[:1] != [SPARSE_LAYOUT_VERSION] or spec is None or spec.name != self.fmt:
                error_msgs.append(f"{where}: the saved weight is {spec.name if spec else v} (layout {v}), this layer is "
                                  f"{self.fmt}; build the layers with the config the model was saved with")
                return
        for name in (*_WEIGHT_BUFFERS, "execution"):  # CSR lengths and measured batch sizes come from the file
            t, mine = state_dict.get(prefix + name), self._buffers.get(name)
            if t is not None and mine is not None and t.shape != mine.shape:
                self._buffers[name] = torch.empty(t.shape, dtype=mine.dtype, device=mine.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        b = self._buffers
        problem = check_shapes(sparse_format(self.fmt), self.out_features, self.in_features, b["values"],  # type: ignore[arg-type]
                               b["indices"], b.get("row_ptr"), b.get("scales"))  # type: ignore[arg-type]
        if problem:
            error_msgs.append(f"{where}: {problem}")
        self._dense = None

    def _apply(self, fn: Any, recurse: bool = True) -> SparseLinear:
        """Module casts (``.half()``, ``.to(torch.bfloat16)``) move the buffers but keep their storage dtypes: the
        kernels read fp32 values and scales raw."""
        before = {name: b for name, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        self._dense = None
        return self

    @property
    def nbytes(self) -> int:
        return self.sparse.nbytes + (self.bias.numel() * 4 if self.bias is not None else 0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}"


@functools.lru_cache(maxsize=1024)
def _decide(execution: tuple[tuple[int, ...], ...], rows: int) -> bool:
    covering = [(b, code) for b, code in execution if b >= rows]
    return bool(covering) and min(covering)[1] == 1
