"""ONNX export of nnforge models, quantized layers included, for ONNX Runtime.

>>> from nnforge.deploy.onnx import export_onnx
>>> export_onnx(model, "model.onnx", (input_ids, attention_mask),
...             input_names=["input_ids", "attention_mask"], dynamic_axes={"input_ids": {0: "b", 1: "t"}})  # doctest: +SKIP

How each packed layer is written (nothing is dequantized to fp32 on the way, except convolutions):

- :class:`~nnforge.compress.QuantizedLinear` (int8, int4, int3, int2, ternary, binary; any group size) →
  ``com.microsoft.MatMulNBits`` with 8-, 4- or 2-bit codes, per-block fp32 scales and uint8 zero points
  (int3 codes use the 4-bit layout; ternary and binary use 2-bit codes with zero point 1, binary as codes
  {0, 2}). ``accuracy_level=4`` lets ONNX Runtime quantize activations to int8 inside the kernel, as our
  own kernels do. An AWQ / SmoothQuant input scale becomes a ``Mul`` before it; static W8A8 activations a
  ``QuantizeLinear`` → ``DequantizeLinear`` pair with the calibrated scale.
- with ``int8_matmul="integer"``, a dynamic W8A8 ``QuantizedLinear`` (int8, per-row scales,
  ``act_quant="dynamic"``) → the standard integer pattern that ONNX Runtime's own ``quantize_dynamic``
  writes: ``DynamicQuantizeLinear`` (uint8 activations, one scale per tensor) → ``MatMulInteger`` with
  the int8 weight ``(K, N)`` → ``Cast`` → ``Mul`` by activation scale × per-column weight scales → ``Add``
  bias. ONNX Runtime fuses it into
  ``DynamicQuantizeMatMul`` (its fastest int8 CPU path); the SmoothQuant scale stays a ``Mul`` before it.
  One activation scale per tensor is coarser than PyTorch's per-token rounding (and than MatMulNBits'
  per-block rounding at ``accuracy_level=4``): faster, less faithful — on MiniLM, the FFN down-projections
  (whose [CLS] token carries a 5-7x outlier channel) lose the most.
- :class:`~nnforge.compress.QuantizedEmbedding` → ``Gather`` of the packed rows (the same bytes as in
  PyTorch), unpacked with ``BitShift`` and dequantized with standard ops.
- :class:`~nnforge.compress.QuantizedConv2d` → a plain ``Conv`` with the dequantized fp32 kernel.

It uses torch's TorchScript-based exporter, which lets a layer name the contrib operator it becomes; the
file is written to a temporary name, checked with ``onnx.checker``, then renamed into place.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from nnforge.compress import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear
from nnforge.compress._transform import set_child
from nnforge.compress.quantize.kernels import PackedWeight
from nnforge.errors import ConfigError, NnforgeError

__all__ = ["export_onnx", "matmul_nbits_tensors"]

_NBITS = {"int8": 8, "int4": 4, "int3": 4, "int2": 2, "ternary": 2, "binary": 2}


def matmul_nbits_tensors(w: PackedWeight, block_size: int | None = None) -> dict[str, Any]:
    """The ``B``, ``scales`` and ``zero_points`` inputs and attributes of MatMulNBits for a packed weight.

    ``block_size`` defaults to the weight's group size (per-row scales: 128, the scale repeated per block).
    """
    bits = _NBITS[w.fmt]
    bs = block_size or w.group_size or 128
    K, N = w.K, w.N
    n_blocks = -(-K // bs)
    u = w.codes().to(torch.int32)  # (N, K) unsigned codes
    spec = w.spec
    ng = w.scales.shape[1]
    g = w.group  # the group length of the scales
    col_group = torch.arange(K) // g  # (K,) group of every column
    zeros = (w.zeros.to(torch.int32) if w.zeros is not None
             else torch.full((N, ng), int(spec.z_symmetric), dtype=torch.int32))
    scales = w.scales.float()
    if w.fmt == "binary":  # w = s (2u - 1) = s (c - 1) with c = 2u
        u = 2 * u
        zeros = torch.ones_like(zeros)
    block_first_col = torch.arange(n_blocks) * bs
    if bs > g and w.group_size is not None:
        raise ConfigError(f"block_size {bs} is larger than the weight's group size {g}")
    blk_group = col_group[block_first_col.clamp(max=K - 1)]  # (n_blocks,) group of each block (bs divides g)
    blk_scales = scales[:, blk_group]  # (N, n_blocks)
    blk_zeros = zeros[:, blk_group]
    padded = torch.empty(N, n_blocks * bs, dtype=torch.int32)
    padded[:, :K] = u
    padded[:, K:] = blk_zeros[:, -1:].expand(N, n_blocks * bs - K)  # padding dequantizes to 0
    per = 8 // bits
    codes = padded.view(N, -1, per)
    packed = torch.zeros(codes.shape[:2], dtype=torch.int32)
    for i in range(per):  # low-first
        packed |= codes[..., i] << (i * bits)
    B = packed.to(torch.uint8).view(N, n_blocks, bs * bits // 8)
    zper = n_blocks * bits
    zp_cols = -(-zper // 8)
    zpad = torch.zeros(N, zp_cols * per, dtype=torch.int32)
    zpad[:, :n_blocks] = blk_zeros
    zpk = torch.zeros(N, zp_cols, dtype=torch.int32)
    zc = zpad.view(N, zp_cols, per)
    for i in range(per):
        zpk |= zc[..., i] << (i * bits)
    return {"B": B, "scales": blk_scales.contiguous(), "zero_points": zpk.to(torch.uint8), "K": K, "N": N,
            "bits": bits, "block_size": bs}


class _MatMulNBitsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, B: torch.Tensor, scales: torch.Tensor, zp: torch.Tensor,  # type: ignore[override]
                w_ref: torch.Tensor, K: int, N: int, bits: int, block_size: int, accuracy_level: int) -> torch.Tensor:
        return x @ w_ref.T

    @staticmethod
    def symbolic(g: Any, x: Any, B: Any, scales: Any, zp: Any, w_ref: Any, K: int, N: int, bits: int,
                 block_size: int, accuracy_level: int) -> Any:
        return g.op("com.microsoft::MatMulNBits", x, B, scales, zp, K_i=K, N_i=N, bits_i=bits,
                    block_size_i=block_size, accuracy_level_i=accuracy_level)


class _ExportNBits(nn.Module):
    """What a QuantizedLinear becomes for export (MatMulNBits; eager forward only serves tracing)."""

    def __init__(self, q: QuantizedLinear, accuracy_level: int) -> None:
        super().__init__()
        t = matmul_nbits_tensors(q.packed)
        self.K, self.N, self.bits, self.block_size = t["K"], t["N"], t["bits"], t["block_size"]
        self.accuracy_level = accuracy_level
        self.register_buffer("B", t["B"])
        self.register_buffer("scales", t["scales"])
        self.register_buffer("zero_points", t["zero_points"])
        self.w_ref = q.packed.dequantize()  # not a buffer: used by the eager forward during tracing only
        self.inv_scale = None if q.input_scale is None else nn.Buffer(1.0 / q.input_scale.detach().clone())
        self.bias = None if q.bias is None else nn.Buffer(q.bias.detach().clone())
        self.act_scale = float(q.act_scale) if q.act_quant == "static" and q.act_scale is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_scale is not None:
            x = x * self.inv_scale
        if self.act_scale is not None:  # static int8 activations: QuantizeLinear → DequantizeLinear
            x = _QDQFn.apply(x, self.act_scale)
        y = _MatMulNBitsFn.apply(x, self.B, self.scales, self.zero_points, self.w_ref, self.K, self.N, self.bits,
                                 self.block_size, self.accuracy_level)
        return y + self.bias if self.bias is not None else y


class _DynamicInt8MatMulFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w_kn: torch.Tensor, w_scale: torch.Tensor,  # type: ignore[override]
                w_ref: torch.Tensor) -> torch.Tensor:
        return x @ w_ref.T

    @staticmethod
    def symbolic(g: Any, x: Any, w_kn: Any, w_scale: Any, w_ref: Any) -> Any:
        xq, xs, xz = g.op("DynamicQuantizeLinear", x, outputs=3)
        wz = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8))
        acc = g.op("MatMulInteger", xq, w_kn, xz, wz)  # int32
        scale = g.op("Mul", xs, w_scale)  # (N,): activation scale × per-column weight scale
        return g.op("Mul", g.op("Cast", acc, to_i=1), scale)  # to float32


class _ExportDynamicInt8(nn.Module):
    """A dynamic W8A8 QuantizedLinear for export: ``MatMulInteger`` on uint8 activations and int8 weights."""

    def __init__(self, q: QuantizedLinear) -> None:
        super().__init__()
        w = q.packed
        scales = w.scales.float()[:, 0]  # (N,) one scale per output channel
        codes = torch.round(w.dequantize() / scales[:, None]).clamp(-128, 127)
        self.register_buffer("w_kn", codes.to(torch.int8).T.contiguous())  # (K, N), as MatMulInteger wants
        self.register_buffer("w_scale", scales.contiguous())
        self.w_ref = q.packed.dequantize()  # not a buffer: used by the eager forward during tracing only
        self.inv_scale = None if q.input_scale is None else nn.Buffer(1.0 / q.input_scale.detach().clone())
        self.bias = None if q.bias is None else nn.Buffer(q.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_scale is not None:
            x = x * self.inv_scale
        y = _DynamicInt8MatMulFn.apply(x, self.w_kn, self.w_scale, self.w_ref)
        return y + self.bias if self.bias is not None else y


def _is_dynamic_w8a8(q: QuantizedLinear) -> bool:
    return q.act_quant == "dynamic" and q.fmt == "int8" and q.group_size is None


class _QDQFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x / scale).clamp(-128, 127) * scale

    @staticmethod
    def symbolic(g: Any, x: Any, scale: float) -> Any:
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        z = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z), s, z)


class _ExportEmbedding(nn.Module):
    """A QuantizedEmbedding for export: the packed bytes themselves, unpacked per looked-up row with
    ``BitShift`` and standard arithmetic, so the file keeps the packed size (0.5 byte per int4 weight). Scales
    stay fp16 and zero points uint8, as in PyTorch, and are cast to fp32 only for the rows looked up."""

    data: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None

    def __init__(self, q: QuantizedEmbedding) -> None:
        super().__init__()
        w = q.packed
        spec = w.spec
        ng = w.scales.shape[1]
        self.register_buffer("data", w.data.clone())  # (N, Kp * bits / 8), layout v1 (docs/kernels.md)
        self.register_buffer("scales", w.scales.clone())  # fp16
        self.register_buffer("zeros", None if w.zeros is None else w.zeros.clone())  # uint8
        self.z_symmetric = float(spec.z_symmetric)
        self.amul, self.ng, self.G, self.K, self.bits = spec.amul, ng, w.group, w.K, spec.bits
        self.planes = 8 // spec.bits

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.data[ids]  # (..., nbytes) uint8
        if self.planes == 1:  # int8: one code per byte, nothing to unpack
            codes = rows.float().reshape(*ids.shape, self.ng, self.G)
        else:
            blocks = rows.reshape(*ids.shape, -1, 1, 64)  # (..., nblocks, 1, 64)
            planes = []
            for p in range(self.planes):  # code of plane p = (x >> p·bits) - ((x >> (p+1)·bits) << bits)
                hi = blocks >> ((p + 1) * self.bits) if (p + 1) * self.bits < 8 else torch.zeros_like(blocks)
                planes.append((blocks >> (p * self.bits)) - (hi << self.bits) if p else blocks - (hi << self.bits))
            codes = torch.cat(planes, dim=-2).float().reshape(*ids.shape, self.ng, self.G)
        z = self.zeros[ids].float().unsqueeze(-1) if self.zeros is not None else self.z_symmetric
        w = (codes * self.amul - z) * self.scales[ids].float().unsqueeze(-1)
        return w.reshape(*ids.shape, self.ng * self.G)[..., : self.K]


def _for_export(model: nn.Module, accuracy_level: int, int8_matmul: str = "nbits") -> nn.Module:
    model = copy.deepcopy(model).eval()
    mod: Any
    for name, mod in list(model.named_modules()):
        if isinstance(mod, QuantizedLinear) and int8_matmul == "integer" and _is_dynamic_w8a8(mod):
            set_child(model, name, _ExportDynamicInt8(mod))
        elif isinstance(mod, QuantizedLinear):
            set_child(model, name, _ExportNBits(mod, accuracy_level))
        elif isinstance(mod, QuantizedEmbedding):
            set_child(model, name, _ExportEmbedding(mod))
        elif isinstance(mod, QuantizedConv2d):
            conv: Any = nn.Conv2d(mod.weight_shape[1] * mod.groups, mod.weight_shape[0], tuple(mod.weight_shape[2:4]),  # type: ignore[arg-type]

                                  mod.stride, mod.padding, mod.dilation, mod.groups, bias=mod.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(mod.dequantize().view(mod.weight_shape))
                if mod.bias is not None:
                    conv.bias.copy_(mod.bias)
            set_child(model, name, conv)
    return model


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example_inputs: tuple[Any, ...], *,
                input_names: list[str] | None = None, output_names: list[str] | None = None,
                dynamic_axes: dict[str, dict[int, str]] | None = None, opset: int = 17,
                accuracy_level: int = 4, int8_matmul: Literal["nbits", "integer"] = "nbits") -> Path:
    """Export ``model`` (fp32 or quantized by nnforge) to an ONNX file that ONNX Runtime runs.

    Args:
        example_inputs: positional inputs for one forward pass (used for tracing).
        accuracy_level: MatMulNBits compute type (4: int8 activations; 0/1: fp32).
        int8_matmul: how dynamic W8A8 layers are written: ``nbits`` (MatMulNBits, 8-bit codes, activations
            rounded per block of 128 inside the kernel) or ``integer`` (``DynamicQuantizeLinear`` +
            ``MatMulInteger``, one activation scale per tensor; what ``quantize_dynamic`` emits, as fast).

    Returns:
        The path written. Raises :class:`~nnforge.errors.NnforgeError` if the exported graph fails the checker.
    """
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ConfigError("ONNX export needs the onnx extra: pip install 'nnforge[onnx]'") from exc
    if int8_matmul not in ("nbits", "integer"):
        raise ConfigError(f"The 'int8_matmul' parameter of export_onnx must be 'nbits' or 'integer'. "
                          f"Got {int8_matmul!r} instead.")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_for_export(model, accuracy_level, int8_matmul), example_inputs, tmp, dynamo=False,
                              opset_version=opset, input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
        try:
            onnx.checker.check_model(tmp)
        except Exception as exc:
            raise NnforgeError(f"the exported ONNX graph failed onnx.checker: {exc}") from None
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
