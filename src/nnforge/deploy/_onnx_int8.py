"""The per-row int8 export forms of :mod:`nnforge.deploy.onnx`: ``integer`` (DynamicQuantizeLinear +
MatMulInteger, what ONNX Runtime's quantize_dynamic writes) and ``rowwise`` (PyTorch's per-row int8 arithmetic in
standard operators, which onnxruntime-web runs), and the helpers every merged projection uses."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnforge.compress import QuantizedLinear


def _shared_input_scale(qs: list[QuantizedLinear]) -> nn.Buffer | None:
    s = qs[0].input_scale
    return None if s is None else nn.Buffer(1.0 / s.detach().clone())


def _cat_bias(qs: list[QuantizedLinear]) -> nn.Buffer | None:
    return None if qs[0].bias is None else nn.Buffer(torch.cat([q.bias.detach() for q in qs if q.bias is not None]))


class _Int8MatMulFn(torch.autograd.Function):
    """Eager forward (tracing) with the dequantized weight; subclasses write the int8 operators in ``symbolic``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w_kn: torch.Tensor, w_scale: torch.Tensor,  # type: ignore[override]
                w_ref: torch.Tensor) -> torch.Tensor:
        return x @ w_ref.T


class _DynamicInt8MatMulFn(_Int8MatMulFn):

    @staticmethod
    def symbolic(g: Any, x: Any, w_kn: Any, w_scale: Any, w_ref: Any) -> Any:
        xq, xs, xz = g.op("DynamicQuantizeLinear", x, outputs=3)
        wz = g.op("Constant", value_t=torch.tensor(128, dtype=torch.uint8))
        acc = g.op("MatMulInteger", xq, w_kn, xz, wz)  # int32: uint8 x uint8, exact on every CPU (see w_kn)
        scale = g.op("Mul", xs, w_scale)  # (N,): activation scale × per-column weight scale
        return g.op("Mul", g.op("Cast", acc, to_i=1), scale)  # to float32


class _ExportInt8Rows(nn.Module):
    """Per-row int8 QuantizedLinear(s) merged for export: the int8 codes ``(N, K)`` (clamped to ``[lo, 127]``) and
    the per-output-channel scales; a subclass stores the codes as its operator wants (``_store``) and names the
    autograd function whose ``symbolic`` writes the operators (``_fn``)."""

    _fn: Any
    lo = -127

    def __init__(self, qs: list[QuantizedLinear]) -> None:
        super().__init__()
        codes, scales = [], []
        for q in qs:
            sc = q.packed.scales.float()[:, 0]  # (N,) one scale per output channel
            codes.append(torch.round(q.packed.dequantize() / sc[:, None]).clamp(self.lo, 127))
            scales.append(sc)
        self.register_buffer("w_kn", self._store(torch.cat(codes)))
        self.register_buffer("w_scale", torch.cat(scales).contiguous())
        self.w_ref = torch.cat([q.packed.dequantize() for q in qs])  # not a buffer: eager forward (tracing) only
        self.inv_scale = _shared_input_scale(qs)
        self.bias = _cat_bias(qs)

    def _store(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(torch.int8).T.contiguous()  # (K, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_scale is not None:
            x = x * self.inv_scale
        y = self._fn.apply(x, self.w_kn, self.w_scale, self.w_ref)
        return y + self.bias if self.bias is not None else y


class _ExportDynamicInt8(_ExportInt8Rows):
    """Dynamic W8A8 QuantizedLinear(s) for export: ``MatMulInteger`` on uint8 activations and int8 weights."""

    _fn = _DynamicInt8MatMulFn
    lo = -128

    def _store(self, codes: torch.Tensor) -> torch.Tensor:
        # (K, N) as MatMulInteger wants; uint8 (zero point 128): x86 without VNNI saturates uint8 x int8 in int16
        return (codes + 128).to(torch.uint8).T.contiguous()


class _RowwiseInt8MatMulFn(_Int8MatMulFn):
    @staticmethod
    def symbolic(g: Any, x: Any, w_kn: Any, w_scale: Any, w_ref: Any) -> Any:
        def const(v: float) -> Any:
            return g.op("Constant", value_t=torch.tensor(v, dtype=torch.float32))

        absx = g.op("Abs", x)
        if g.opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
            amax = g.op("ReduceMax", absx, g.op("Constant", value_t=torch.tensor([-1])), keepdims_i=1)
        else:
            amax = g.op("ReduceMax", absx, axes_i=[-1], keepdims_i=1)
        s = g.op("Div", amax, const(127.0))  # (..., 1) as the kernel: absmax / 127, 1 for an all-zero row
        s = g.op("Where", g.op("Greater", s, const(0.0)), s, const(1.0))
        q = g.op("Clip", g.op("Round", g.op("Div", x, s)), const(-127.0), const(127.0))
        acc = g.op("MatMul", q, g.op("Cast", w_kn, to_i=1))  # exact integer sums in float32
        return g.op("Mul", acc, g.op("Mul", s, w_scale))


class _ExportRowwiseInt8(_ExportInt8Rows):
    """Per-row int8 QuantizedLinear(s) for export: the packed kernel's arithmetic (int8 activations per row) in
    standard ONNX ops."""

    _fn = _RowwiseInt8MatMulFn


def _is_rowwise_int8(q: QuantizedLinear) -> bool:
    """Symmetric int8 with one scale per row, activations rounded per row in PyTorch (the kernel, or W8A8 dynamic)."""
    return (q.fmt == "int8" and q.group_size is None and q.packed.zeros is None and q.act_quant != "static"
            and (q.kernel or q.act_quant == "dynamic"))


def _is_dynamic_w8a8(q: QuantizedLinear) -> bool:
    return q.act_quant == "dynamic" and q.fmt == "int8" and q.group_size is None
