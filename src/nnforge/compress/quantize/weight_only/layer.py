"""Packed quantized layers: :class:`QuantizedLinear` and :class:`QuantizedEmbedding`.

The weight lives as a :class:`~nnforge.compress.quantize.kernels.PackedWeight` (uint8 codes, fp16 scales,
optional uint8 zero points) registered as buffers, so ``state_dict`` / safetensors hold exactly the packed
bytes. A layer may carry a per-input-channel ``input_scale`` (AWQ, SmoothQuant): it computes
``(x / input_scale) @ Ŵᵀ``, where ``Ŵ`` was quantized from ``W · input_scale``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.compress.quantize.kernels import LAYOUT_VERSION, PackedWeight, padded_k, qgemv, unpack
from nnforge.compress.quantize.kernels._format import format_of_layout, format_spec

__all__ = ["QuantizedLinear", "QuantizedEmbedding", "QuantizedConv2d", "ActQuant", "float_activations"]

ActQuant = str  # "none" | "dynamic" (int8 per token) | "static" (int8 per tensor, calibrated scale)


# codes of the ``layout`` buffer (stable: they are saved): LAYOUT_VERSION, format (its registered layout_code),
# group size (0: per row), symmetric, activation quantization of the owning layer
_ACT_CODES = {"none": 0, "dynamic": 1, "static": 2}


def _describe_layout(t: torch.Tensor) -> str:
    v = [int(x) for x in t.reshape(-1).tolist()]
    if len(v) != 5:
        return f"an unknown layout {v}"
    fmt, acts = format_of_layout(v[1]), {c: n for n, c in _ACT_CODES.items()}
    return (f"{fmt.name if fmt else f'format {v[1]}'} {'group ' + str(v[2]) if v[2] else 'per row'} "
            f"{'sym' if v[3] else 'asym'}, activations {acts.get(v[4], v[4])} (layout v{v[0]})")


def _packed_shapes(fmt: str, n: int, k: int, group_size: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
    spec = format_spec(fmt)
    kp = padded_k(k, spec.bits, group_size)
    return (n, kp * spec.bits // 8), (n, kp // (group_size or kp))


class _Packed(nn.Module):
    """Buffers of one packed weight, and the :class:`PackedWeight` view of them (rebuilt after loading)."""

    data: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None

    def __init__(self, fmt: str, n: int, k: int, group_size: int | None, symmetric: bool,
                 act_quant: str = "none") -> None:
        super().__init__()
        self.fmt, self.n, self.k, self.group_size, self.symmetric = fmt, n, k, group_size, symmetric
        dshape, sshape = _packed_shapes(fmt, n, k, group_size)
        self.register_buffer("data", torch.zeros(dshape, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(sshape, dtype=torch.float16))
        self.register_buffer("zeros", None if symmetric else torch.zeros(sshape, dtype=torch.uint8))
        # what the bytes mean, saved with them: int4/int3, int2/ternary or weight-only int8/W8A8 have the same
        # buffer shapes, so without it a file loaded silently into a skeleton of another format
        self.register_buffer("layout", torch.tensor([LAYOUT_VERSION, format_spec(fmt).layout_code, group_size or 0,
                                                     int(symmetric), _ACT_CODES[act_quant]], dtype=torch.int32))
        self._view: PackedWeight | None = None  # rebuilt when the buffers are replaced (loading copies in place)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        key = prefix + "layout"
        saved = state_dict.get(key)
        mine = self.get_buffer("layout")
        if saved is not None and (saved.shape != mine.shape or not torch.equal(saved.to(torch.int32), mine)):
            error_msgs.append(f"{prefix.rstrip('.') or 'the packed weight'}: the saved weight is "
                              f"{_describe_layout(saved)}, this layer is {_describe_layout(mine)}; "
                              "build the layers with the config the model was saved with")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if saved is None and key in missing_keys:  # saved before the layout was recorded: loads as it did
            missing_keys.remove(key)

    def set_packed(self, w: PackedWeight) -> None:
        if (w.fmt, w.N, w.K, w.group_size, w.zeros is None) != (self.fmt, self.n, self.k, self.group_size, self.symmetric):
            raise ValueError(f"packed weight {w.fmt} {w.N}x{w.K} g{w.group_size} does not fit this layer "
                             f"({self.fmt} {self.n}x{self.k} g{self.group_size})")
        self.data, self.scales, self.zeros = w.data, w.scales, w.zeros
        self._view = w

    @property
    def packed(self) -> PackedWeight:
        v = self._view
        if v is None or v.data is not self.data or v.scales is not self.scales or v.zeros is not self.zeros:
            v = self._view = PackedWeight(self.fmt, self.data, self.scales, self.zeros, self.n, self.k, self.group_size)
        return v

    def _apply(self, fn: Any, recurse: bool = True) -> _Packed:
        """Module casts (``.to(torch.bfloat16)``, ``.double()``, ``.half()``) move the buffers but keep their
        storage dtypes: the kernels read the scales as fp16, and a round trip through bf16 would round them."""
        before = {name: b for name, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        self._view = None
        return self

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight, scales and zero points included."""
        return 8.0 * self.packed.nbytes / (self.n * self.k)


class QuantizedLinear(nn.Module):
    """``y = x @ Ŵᵀ + b`` with ``Ŵ`` packed (int8 … binary); see the module docstring.

    Numerics (docs/kernels.md, "Numerics"): a row's output does not depend on the batch it came in, the grad
    mode or inference mode. With ``kernel`` set (the default) every call rounds the activations to int8 per
    row and multiplies them by the integer codes through ``torch.ops.nnforge.qgemm`` (the packed kernel on the
    CPU for any batch size, the same arithmetic in torch elsewhere), so the accuracy measured at batch 64 is
    the arithmetic timed at batch 1; with grad enabled the same forward runs and the gradient of the input is
    ``grad @ Ŵ`` (straight-through past the rounding). Per-row outputs are bit-identical across batch sizes
    on the AVX2, scalar and torch paths and agree to a relative 1e-5 of the row's largest output on the
    AVX-512 path (whose tiles of 1 to 4 rows sum group scales in different orders). With ``kernel=False``
    the layer is ``x @ Ŵᵀ`` in the input's float dtype for every batch (what an ONNX export's MatMul does),
    equal across batch sizes to that same 1e-5. ``act_quant="dynamic"`` (W8A8, int8 per token) is the kernel
    arithmetic; ``"static"`` rounds with the calibrated per-tensor ``act_scale`` and multiplies in float. ``verdict`` holds the measured "faster" / "slower" / "not significant" per batch size once
    :func:`~nnforge.compress.quantize.weight_only.measure_verdicts` has run.
    """

    bias: torch.Tensor | None
    input_scale: torch.Tensor | None
    act_scale: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool, fmt: str, group_size: int | None,
                 symmetric: bool = True, *, kernel: bool = True, input_scale: bool = False,
                 act_quant: ActQuant = "none") -> None:
        super().__init__()
        if act_quant not in ("none", "dynamic", "static"):
            raise ValueError(f"act_quant must be 'none', 'dynamic' or 'static'. Got {act_quant!r} instead.")
        self.in_features, self.out_features = in_features, out_features
        self.fmt, self.group_size, self.kernel, self.act_quant = fmt, group_size, kernel, act_quant
        self.weight_packed = _Packed(fmt, out_features, in_features, group_size, symmetric, act_quant)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_scale", torch.ones(in_features) if input_scale else None)
        self.register_buffer("act_scale", torch.ones(()) if act_quant == "static" else None)
        self.verdict: dict[int, dict[str, Any]] = {}
        self.float_weight: torch.Tensor | None = None  # the dequantized weight, inside float_activations only

    @classmethod
    def from_packed(cls, w: PackedWeight, bias: torch.Tensor | None = None, *, input_scale: torch.Tensor | None = None,
                    kernel: bool = True, act_quant: ActQuant = "none") -> QuantizedLinear:
        m = cls(w.K, w.N, bias is not None, w.fmt, w.group_size, w.zeros is None, kernel=kernel,
                input_scale=input_scale is not None, act_quant=act_quant)
        m.weight_packed.set_packed(w)
        if bias is not None and m.bias is not None and not bias.is_meta:  # meta (skeleton): load_state_dict fills it
            m.bias.copy_(bias.detach().float())
        if input_scale is not None and m.input_scale is not None:
            m.input_scale.copy_(input_scale.detach().float())
        return m

    @property
    def packed(self) -> PackedWeight:
        return self.weight_packed.packed

    def dequantize(self) -> torch.Tensor:
        """The effective fp32 weight ``(N, K)``, input scale folded back in (``Ŵ / input_scale``)."""
        w = self.packed.dequantize()
        return w / self.input_scale if self.input_scale is not None else w

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant == "dynamic":  # codes within [-127, 127] by construction (s = absmax / 127)
            s = (x.abs().amax(dim=-1, keepdim=True) / 127.0).clamp_min(1e-12)
            return torch.round(x / s).clamp_(-127, 127) * s
        if self.act_quant == "static" and self.act_scale is not None:
            # the full int8 range, as the exported QuantizeLinear saturates: inputs below the calibrated range
            # give code -128 in both (this path never reaches the packed kernels)
            s = self.act_scale
            return torch.round(x / s).clamp_(-128, 127) * s
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        if self.kernel and self.act_quant != "static":  # one arithmetic for every batch size and grad mode
            y = qgemv(x, self.packed).to(dtype)  # int8 activations per row inside the op
        else:
            w = self.float_weight if self.float_weight is not None else self.packed.dequantize()
            y = F.linear(self._quantize_input(x), w.to(dtype))
        return y + self.bias.to(dtype) if self.bias is not None else y

    @property
    def nbytes(self) -> int:
        extra = sum(t.numel() * t.element_size() for t in (self.bias, self.input_scale, self.act_scale) if t is not None)
        return self.packed.nbytes + extra

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}, "
                f"group_size={self.group_size}, act_quant={self.act_quant}")


class QuantizedEmbedding(nn.Module):
    """An embedding table stored packed; a lookup unpacks only the rows it reads."""

    def __init__(self, num_embeddings: int, embedding_dim: int, fmt: str, group_size: int | None,
                 symmetric: bool = True, padding_idx: int | None = None, *,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.fmt, self.group_size = fmt, group_size
        self.dtype = dtype  # of the embedding it replaced: the rows come out in it (a bf16 model stays bf16)
        self.weight_packed = _Packed(fmt, num_embeddings, embedding_dim, group_size, symmetric)

    @classmethod
    def from_packed(cls, w: PackedWeight, padding_idx: int | None = None, *,
                    dtype: torch.dtype = torch.float32) -> QuantizedEmbedding:
        m = cls(w.N, w.K, w.fmt, w.group_size, w.zeros is None, padding_idx, dtype=dtype)
        m.weight_packed.set_packed(w)
        return m

    def _apply(self, fn: Any, recurse: bool = True) -> QuantizedEmbedding:
        super()._apply(fn, recurse)
        try:  # a module cast (.to(torch.bfloat16), .double()) changes the output dtype as nn.Embedding's would
            probe = fn(torch.zeros((), dtype=self.dtype))
        except Exception:  # noqa: BLE001 - an _apply function that is not a conversion: the dtype stays
            return self
        if isinstance(probe, torch.Tensor) and probe.is_floating_point():
            self.dtype = probe.dtype
        return self

    @property
    def packed(self) -> PackedWeight:
        return self.weight_packed.packed

    def dequantize(self) -> torch.Tensor:
        return self.packed.dequantize()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.packed
        spec, flat = w.spec, ids.reshape(-1)
        # as nn.Embedding, ids outside [0, num_embeddings) are an error (indexing would wrap negative ids around)
        if flat.device.type != "cpu":  # no host sync: a bad id becomes num_embeddings, which indexing refuses
            flat = flat.masked_fill((flat < 0) | (flat >= self.num_embeddings), self.num_embeddings)
        elif flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise IndexError(f"embedding ids must be in [0, {self.num_embeddings}); got {int(flat.min())}.."
                             f"{int(flat.max())}")
        ng = w.scales.shape[1]
        u = unpack(w.data[flat], spec.bits, w.Kp).float().view(-1, ng, w.group)  # (n, ng, G)
        z = (w.zeros[flat].float() if w.zeros is not None
             else torch.full((flat.numel(), ng), spec.z_symmetric, device=u.device))
        rows = (spec.amul * u - z[..., None]) * w.scales[flat].float()[..., None]
        return rows.reshape(flat.numel(), w.Kp)[:, : w.K].reshape(*ids.shape, w.K).to(self.dtype)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    def extra_repr(self) -> str:
        dtype = "" if self.dtype == torch.float32 else f", dtype={self.dtype}"
        return f"{self.num_embeddings}, {self.embedding_dim}, fmt={self.fmt}, group_size={self.group_size}{dtype}"


class QuantizedConv2d(nn.Module):
    """A Conv2d whose ``(out, in·kh·kw)`` weight matrix is packed; dequantized per call (convs are compute-bound)."""

    bias: torch.Tensor | None

    def __init__(self, conv: nn.Conv2d, fmt: str, group_size: int | None, symmetric: bool = True) -> None:
        super().__init__()
        self.weight_shape = tuple(conv.weight.shape)
        self.stride: Any = conv.stride
        self.padding: Any = conv.padding
        self.dilation: Any = conv.dilation
        self.groups = conv.groups
        # reflect/replicate/circular padding is applied by F.pad before the convolution, as nn.Conv2d does
        self.padding_mode: str = conv.padding_mode
        self._pad = list(conv._reversed_padding_repeated_twice)
        self.fmt, self.group_size = fmt, group_size
        n, k = self.weight_shape[0], int(torch.tensor(self.weight_shape[1:]).prod())
        self.weight_packed = _Packed(fmt, n, k, group_size, symmetric)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())

    @property
    def packed(self) -> PackedWeight:
        return self.weight_packed.packed

    def dequantize(self) -> torch.Tensor:
        return self.packed.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.packed.dequantize().view(self.weight_shape).to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if self.padding_mode != "zeros":
            x = F.pad(x, self._pad, mode=self.padding_mode)
            return F.conv2d(x, w, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + (self.bias.numel() * 4 if self.bias is not None else 0)


QUANTIZED_MODULES = (QuantizedLinear, QuantizedEmbedding, QuantizedConv2d)
"""Every packed layer type: a transform meeting one reports it as already quantized."""


@contextmanager
def float_activations(model: nn.Module) -> Iterator[int]:
    """Run every :class:`QuantizedLinear` of ``model`` with float activations and its same quantized weights
    (no int8 rounding of inputs, no packed kernel) inside the block; yields how many layers changed.

    Rounding activations makes a model piecewise constant in its input, so gradient-based explanations of
    it (integrated gradients) cannot add up to its output's change; this differentiable twin can, and its
    outputs stay within the activation rounding of the deployed model's.
    """
    changed = [(m, m.kernel, m.act_quant) for m in model.modules()
               if isinstance(m, QuantizedLinear) and (m.kernel or m.act_quant != "none")]
    for m, _, _ in changed:
        m.kernel, m.act_quant = False, "none"
        m.float_weight = m.packed.dequantize()  # once, not at every forward (explanations run hundreds)
    try:
        yield len(changed)
    finally:
        for m, kernel, act in changed:
            m.kernel, m.act_quant, m.float_weight = kernel, act, None
