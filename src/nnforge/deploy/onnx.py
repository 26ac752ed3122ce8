"""ONNX export of nnforge models, quantized layers included, for ONNX Runtime.

>>> from nnforge.deploy.onnx import export_onnx
>>> export_onnx(model, "model.onnx", (input_ids, attention_mask),
...             input_names=["input_ids", "attention_mask"], dynamic_axes={"input_ids": {0: "b", 1: "t"}})  # doctest: +SKIP

How each packed layer is written (nothing is dequantized to fp32 on the way, except convolutions):

- :class:`~nnforge.compress.QuantizedLinear` (int8, int4, int3, int2, ternary, binary; any group size) →
  ``com.microsoft.MatMulNBits`` with 8-, 4- or 2-bit codes, per-block fp32 scales and uint8 zero points
  (int3 codes use the 4-bit layout; ternary and binary use 2-bit codes with zero point 1, binary as codes
  {0, 2}; per-row weights in blocks of ``block_size``). ``accuracy_level=4`` lets ONNX Runtime quantize
  activations to int8 inside the kernel, as our own kernels do. An AWQ / SmoothQuant input scale becomes a
  ``Mul`` before it; static W8A8 activations a ``QuantizeLinear`` → ``DequantizeLinear`` pair with the
  calibrated scale.
- with ``int8_matmul="integer"``, a dynamic W8A8 ``QuantizedLinear`` (int8, per-row scales,
  ``act_quant="dynamic"``) → the standard integer pattern that ONNX Runtime's own ``quantize_dynamic``
  writes: ``DynamicQuantizeLinear`` (uint8 activations, one scale per tensor) → ``MatMulInteger`` with
  the weight ``(K, N)`` → ``Cast`` → ``Mul`` by activation scale × per-column weight scales → ``Add``
  bias; ONNX Runtime fuses it into ``DynamicQuantizeMatMul``. The SmoothQuant scale stays a ``Mul`` before
  it. The weight is uint8 (int8 codes + 128, zero point 128): ONNX Runtime's uint8 × int8 kernel on x86
  CPUs without VNNI adds product pairs in int16, which saturates (outputs 10% off); uint8 × uint8 is exact.
  One activation scale per tensor is coarser than PyTorch's per-token rounding (and than MatMulNBits'
  per-block rounding at ``accuracy_level=4``): faster, less faithful — on MiniLM, the FFN down-projections
  (whose [CLS] token carries a 5-7x outlier channel) lose the most; a mapping such as
  ``int8_matmul={"*[0-9].output.dense": "nbits", "*": "integer"}`` keeps them on MatMulNBits.
- with ``int8_matmul="rowwise"``, an int8 ``QuantizedLinear`` with one symmetric scale per row whose activations
  PyTorch rounds per row (the packed kernel: weight-only int8, dynamic W8A8) → the kernel's own arithmetic in
  standard ops: ``ReduceMax(Abs(x)) / 127`` per row, ``Round`` (half to even) and ``Clip`` to [-127, 127], a
  ``MatMul`` by the int8 codes (stored as int8, ``Cast`` to float: every product and sum is an exact integer up to
  2^24) and a ``Mul`` by activation scale × per-column weight scale. Outputs agree with PyTorch's to float
  rounding (about 1e-6 of the largest output), where MatMulNBits rounds activations per block of 128 on ONNX
  Runtime's CPU (``accuracy_level=4``) and not at all in onnxruntime-web's WebAssembly build; no contrib operator
  is involved, so any ONNX runtime runs it. Other layers fall back to ``nbits``.
- :class:`~nnforge.compress.QuantizedEmbedding` → ``Gather`` of the packed rows (the same bytes as in
  PyTorch), unpacked with ``BitShift`` and dequantized with standard ops.
- :class:`~nnforge.compress.QuantizedConv2d` → a plain ``Conv`` with the dequantized fp32 kernel.
- BERT-family self-attention (``fuse_attention=True``, the default): query, key and value become one
  matmul (they read the same input; nnforge's SmoothQuant gives them one scale so that W8A8 layers merge
  too) and the attention itself one ``com.microsoft.MultiHeadAttention`` node, instead of the ~40 reshape,
  transpose, matmul and softmax nodes per layer that tracing writes. On MiniLM at batch 1 that is 0.5 ms of
  4.2.
- MatMulNBits scales are stored as fp16 with a ``Cast`` (exact: they are fp16 in PyTorch), which ONNX Runtime
  folds when it loads the file: the file is as small as the safetensors one.

It uses torch's TorchScript-based exporter, which lets a layer name the contrib operator it becomes; the
file is written to a temporary name, checked with ``onnx.checker``, then renamed into place.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from nnforge.compress import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear, set_child
from nnforge.compress.quantize.kernels import PackedWeight
from nnforge.deploy._onnx_int8 import (
    _cat_bias,
    _ExportDynamicInt8,
    _ExportRowwiseInt8,
    _is_dynamic_w8a8,
    _is_rowwise_int8,
    _shared_input_scale,
)
from nnforge.errors import ConfigError, NnforgeError, check_output_path

__all__ = ["export_onnx", "matmul_nbits_tensors"]


def matmul_nbits_tensors(w: PackedWeight, block_size: int | None = None) -> dict[str, Any]:
    """The ``B``, ``scales`` and ``zero_points`` inputs and attributes of MatMulNBits for a packed weight.

    ``block_size`` defaults to the weight's group size (per-row scales: 128, the scale repeated per block).
    """
    bits = w.spec.onnx_bits  # each registered format says how it exports
    if bits is None:
        raise ConfigError(f"weight format {w.fmt!r} has no ONNX export (its FormatSpec declares onnx_bits=None)")
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
    if spec.amul != 1:  # binary: w = s (2u - 1) = s (c - 1) with c = 2u and its symmetric zero point 1
        u = int(spec.amul) * u
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
    """What a QuantizedLinear becomes for export (MatMulNBits; eager forward only serves tracing). Several
    layers that read the same input with the same input scale (query, key, value) become one MatMulNBits
    whose output rows are theirs, one after the other."""

    def __init__(self, qs: list[QuantizedLinear], accuracy_level: int, block_size: int | None = None) -> None:
        super().__init__()
        ts = [matmul_nbits_tensors(q.packed, block_size if q.group_size is None else None) for q in qs]
        self.K, self.bits, self.block_size = ts[0]["K"], ts[0]["bits"], ts[0]["block_size"]
        self.N = sum(t["N"] for t in ts)
        self.accuracy_level = accuracy_level
        for key in ("B", "scales", "zero_points"):
            self.register_buffer(key, torch.cat([t[key] for t in ts]))
        self.w_ref = torch.cat([q.packed.dequantize() for q in qs])  # not a buffer: eager forward (tracing) only
        self.inv_scale = _shared_input_scale(qs)
        self.bias = _cat_bias(qs)
        q = qs[0]
        self.act_scale = float(q.act_scale) if q.act_quant == "static" and q.act_scale is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_scale is not None:
            x = x * self.inv_scale
        if self.act_scale is not None:  # static int8 activations: QuantizeLinear → DequantizeLinear
            x = _QDQFn.apply(x, self.act_scale)
        y = _MatMulNBitsFn.apply(x, self.B, self.scales, self.zero_points, self.w_ref, self.K, self.N, self.bits,
                                 self.block_size, self.accuracy_level)
        return y + self.bias if self.bias is not None else y


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
        if self.planes == 1 and self.ng == 1 and self.G == self.K and self.amul == 1:  # int8, one scale per row:
            z = self.zeros[ids].float() if self.zeros is not None else self.z_symmetric  # no reshapes to trace
            return (rows.float() - z) * self.scales[ids].float()
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


class _MultiHeadAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,  # type: ignore[override]
                num_heads: int, scale: float) -> torch.Tensor:
        B, S, D = q.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, -1, num_heads, D // num_heads).transpose(1, 2)

        o = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=bias, scale=scale)
        return o.transpose(1, 2).reshape(B, S, D)

    @staticmethod
    def symbolic(g: Any, q: Any, k: Any, v: Any, bias: Any, num_heads: int, scale: float) -> Any:
        from torch.onnx import symbolic_helper

        none = symbolic_helper._optional_input_placeholder_tensor(g)
        return g.op("com.microsoft::MultiHeadAttention", q, k, v, none, none, bias, num_heads_i=num_heads,
                    scale_f=scale)


class _MaskCache:
    """The additive attention bias, computed once from the mask that every layer of a forward pass receives."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def bias_for(self, mask: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
        if self.bias is not None and self.mask is mask:
            return self.bias
        S = q.shape[1]
        if mask is None:
            bias = torch.zeros(1, 1, S, S, dtype=q.dtype)
        elif mask.dtype == torch.bool:
            bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, torch.finfo(q.dtype).min)
        else:
            bias = mask.to(q.dtype)
        self.mask, self.bias = mask, bias.expand(-1, -1, S, -1)
        return self.bias


class _ExportSelfAttention(nn.Module):
    """A BERT-style self-attention block for export: one projection for query, key and value when they can
    be merged, then ONNX Runtime's ``MultiHeadAttention`` instead of the reshapes, transposes, matmuls and
    softmax that tracing the module writes (about 40 nodes per layer)."""

    def __init__(self, att: Any, qkv: nn.Module | None, parts: list[nn.Module], masks: _MaskCache) -> None:
        super().__init__()
        self.qkv = qkv
        self.parts = nn.ModuleList(parts)
        self.heads = int(att.num_attention_heads)
        self.D = int(att.query.out_features)
        self.scale = float(getattr(att, "scaling", (self.D // self.heads) ** -0.5))
        self.masks = masks

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        if encoder_hidden_states is not None or kwargs.get("cache") is not None \
                or kwargs.get("past_key_values") is not None:
            raise NnforgeError("fused attention export handles self-attention without a cache: "
                               "export with fuse_attention=False")
        if self.qkv is not None:
            q, k, v = self.qkv(hidden_states).split(self.D, dim=-1)
        else:
            q, k, v = (p(hidden_states) for p in self.parts)
        bias = self.masks.bias_for(attention_mask, q)
        return _MultiHeadAttentionFn.apply(q, k, v, bias, self.heads, self.scale), None


def _is_self_attention(mod: nn.Module) -> bool:
    """A HF BERT-family self-attention module (BERT, RoBERTa, MiniLM, XLM-R, ...): query/key/value
    projections of one size, an integer head count, not a decoder."""
    projs = [getattr(mod, n, None) for n in ("query", "key", "value")]
    return (type(mod).__name__.endswith("SelfAttention") and isinstance(getattr(mod, "num_attention_heads", None), int)
            and all(isinstance(p, nn.Linear | QuantizedLinear) for p in projs)
            and len({(p.in_features, p.out_features) for p in projs}) == 1  # type: ignore[union-attr]
            and not getattr(mod, "is_decoder", False) and not getattr(mod, "is_causal", False))


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def _route(name: str, q: QuantizedLinear, int8_matmul: str | Mapping[str, str]) -> str:
    """``integer``, ``rowwise`` or ``nbits``: how the QuantizedLinear called ``name`` is written."""
    how = int8_matmul if isinstance(int8_matmul, str) else next(
        (v for pattern, v in int8_matmul.items() if fnmatch.fnmatchcase(name, pattern)), "nbits")
    if how == "integer" and _is_dynamic_w8a8(q):
        return "integer"
    return "rowwise" if how == "rowwise" and _is_rowwise_int8(q) else "nbits"


def _linear_export(qs: list[QuantizedLinear], route: str, accuracy_level: int, block_size: int | None) -> nn.Module:
    """The export module of one QuantizedLinear, or of several that read the same input (outputs concatenated)."""
    if route == "integer":
        return _ExportDynamicInt8(qs)
    return _ExportRowwiseInt8(qs) if route == "rowwise" else _ExportNBits(qs, accuracy_level, block_size)


def _merged_projection(mods: list[nn.Module], routes: list[str], accuracy_level: int,
                       block_size: int | None) -> nn.Module | None:
    """One module whose output is the concatenated outputs of ``mods`` (which read the same input), or None."""
    if len({m.bias is None for m in mods}) != 1:
        return None
    if all(type(m) is nn.Linear for m in mods):
        lins: list[nn.Linear] = mods  # type: ignore[assignment]
        fused = nn.Linear(lins[0].in_features, sum(m.out_features for m in lins), bias=lins[0].bias is not None)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([m.weight for m in lins]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([m.bias for m in lins]))  # type: ignore[misc]
        return fused
    if not all(isinstance(m, QuantizedLinear) for m in mods):
        return None
    qs: list[QuantizedLinear] = mods  # type: ignore[assignment]
    first = qs[0]
    if any(r != routes[0] or q.fmt != first.fmt or q.group_size != first.group_size or q.act_quant != first.act_quant
           or not _same(q.input_scale, first.input_scale) or not _same(q.act_scale, first.act_scale)
           for q, r in zip(qs, routes, strict=True)):
        return None
    return _linear_export(qs, routes[0], accuracy_level, block_size)


def _for_export(model: nn.Module, accuracy_level: int, int8_matmul: str | Mapping[str, str] = "nbits",
                block_size: int | None = None, fuse_attention: bool = True) -> nn.Module:
    model = copy.deepcopy(model).eval()
    mod: Any
    masks = _MaskCache()
    if fuse_attention:
        for name, mod in list(model.named_modules()):
            if not _is_self_attention(mod):
                continue
            projs = [mod.query, mod.key, mod.value]
            routes = [_route(f"{name}.{n}", p, int8_matmul) if isinstance(p, QuantizedLinear) else "fp32"
                      for n, p in zip(("query", "key", "value"), projs, strict=True)]
            qkv = _merged_projection(projs, routes, accuracy_level, block_size)
            parts = [] if qkv is not None else [
                _linear_export([p], r, accuracy_level, block_size) if isinstance(p, QuantizedLinear) else p
                for p, r in zip(projs, routes, strict=True)]
            set_child(model, name, _ExportSelfAttention(mod, qkv, parts, masks))
    for name, mod in list(model.named_modules()):
        if isinstance(mod, QuantizedLinear):
            set_child(model, name, _linear_export([mod], _route(name, mod, int8_matmul), accuracy_level, block_size))
        elif isinstance(mod, QuantizedEmbedding):
            set_child(model, name, _ExportEmbedding(mod))
        elif isinstance(mod, QuantizedConv2d):
            conv: Any = nn.Conv2d(mod.weight_shape[1] * mod.groups, mod.weight_shape[0], tuple(mod.weight_shape[2:4]),  # type: ignore[arg-type]
                                  mod.stride, mod.padding, mod.dilation, mod.groups, bias=mod.bias is not None,
                                  padding_mode=mod.padding_mode)  # type: ignore[arg-type]
            with torch.no_grad():
                conv.weight.copy_(mod.dequantize().view(mod.weight_shape))
                if mod.bias is not None:
                    conv.bias.copy_(mod.bias)
            set_child(model, name, conv)
    return model


def _narrow_initializers(path: str) -> None:
    """Store what tracing folded to fp32 in the type it holds exactly, with a ``Cast`` back that ONNX Runtime folds
    when it loads the file (the numbers and the speed are unchanged, the file shrinks):

    - MatMulNBits scales as fp16 (they come from our fp16 scales): 2 bytes per block, 0.66 MB on int4 g32 MiniLM;
    - the int8 codes of ``rowwise`` layers (the ``MatMul`` after ``Clip``) as int8: 3 bytes per weight, the
      file as small as the safetensors one."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: n.op_type for n in graph.node for out in n.output}
    casts = []
    narrow: Any
    for node in graph.node:
        if node.op_type == "MatMulNBits" and len(node.input) > 2:
            name, narrow = node.input[2], np.float16
        elif node.op_type == "MatMul" and producer.get(node.input[0]) == "Clip":
            name, narrow = node.input[1], np.int8
        else:
            continue
        if name not in inits:
            continue
        a = numpy_helper.to_array(inits[name])
        small = a.astype(narrow)
        if a.dtype != np.float32 or not np.array_equal(small.astype(np.float32), a):
            continue
        graph.initializer.remove(inits.pop(name))
        graph.initializer.append(numpy_helper.from_array(small, f"{name}_{small.dtype}"))
        casts.append(onnx.helper.make_node("Cast", [f"{name}_{small.dtype}"], [name], to=onnx.TensorProto.FLOAT))
    if casts:
        for cast in reversed(casts):
            graph.node.insert(0, cast)
        onnx.save(model, path)


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example_inputs: tuple[Any, ...], *,
                input_names: list[str] | None = None, output_names: list[str] | None = None,
                dynamic_axes: dict[str, dict[int, str]] | None = None, opset: int = 17,
                accuracy_level: int = 4,
                int8_matmul: Literal["nbits", "integer", "rowwise"] | Mapping[str, str] = "nbits",
                block_size: int | None = None, fuse_attention: bool = True) -> Path:
    """Export ``model`` (fp32 or quantized by nnforge) to an ONNX file that ONNX Runtime runs.

    Args:
        example_inputs: positional inputs for one forward pass (used for tracing).
        accuracy_level: MatMulNBits compute type (4: int8 activations; 0/1: fp32).
        int8_matmul: how dynamic W8A8 layers are written: ``nbits`` (MatMulNBits, 8-bit codes, activations
            rounded per block of 128 inside the kernel) or ``integer`` (``DynamicQuantizeLinear`` +
            ``MatMulInteger``, one activation scale per tensor; what ``quantize_dynamic`` emits, as fast), or
            ``rowwise`` (per-row int8 layers as the packed kernel computes them, in standard ops: see the module
            docstring; what onnxruntime-web runs with PyTorch's numbers), or
            a mapping of ``fnmatch`` patterns on module names to those, first match wins, ``nbits`` when
            none does — e.g. ``{"*[0-9].output.dense": "nbits", "*": "integer"}`` keeps MiniLM's FFN
            down-projections (an outlier token) on per-block activations and the rest on the faster integer path.
        block_size: MatMulNBits block length for weights with one scale per row (int8 weight-only and W8A8):
            a power of two >= 16, default 128. At ``accuracy_level=4`` ONNX Runtime rounds activations per
            block, so a smaller block is more faithful (on MiniLM, 64 instead of 128: NN agreement 0.91 →
            0.955) and the file a little larger (one fp16 scale per block). Grouped weights use their group.
        fuse_attention: write BERT-family self-attention blocks (``query``/``key``/``value`` projections and
            ``num_attention_heads``: BERT, RoBERTa, MiniLM, ...) as one merged query/key/value projection and
            a ``com.microsoft.MultiHeadAttention`` node. Other modules are exported as traced.

    Returns:
        The path written. Raises :class:`~nnforge.errors.NnforgeError` if the exported graph fails the checker.
    """
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ConfigError("ONNX export needs the onnx extra: pip install 'nnforge[onnx]'") from exc
    routes = list(int8_matmul.values()) if isinstance(int8_matmul, Mapping) else [int8_matmul]
    if any(r not in ("nbits", "integer", "rowwise") for r in routes):
        raise ConfigError(f"The 'int8_matmul' parameter of export_onnx must be 'nbits', 'integer', 'rowwise' or a "
                          f"mapping of module-name patterns to them. Got {int8_matmul!r} instead.")
    if block_size is not None and (not isinstance(block_size, int) or block_size < 16
                                   or block_size & (block_size - 1)):
        raise ConfigError(f"The 'block_size' parameter of export_onnx must be a power of two >= 16. "
                          f"Got {block_size!r} instead.")
    out = Path(path)
    check_output_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            export_model = _for_export(model, accuracy_level, int8_matmul, block_size, fuse_attention)
            torch.onnx.export(export_model, example_inputs, tmp, dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
        _narrow_initializers(tmp)
        try:
            onnx.checker.check_model(tmp)
        except Exception as exc:
            raise NnforgeError(f"the exported ONNX graph failed onnx.checker: {exc}") from None
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
