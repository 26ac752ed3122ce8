"""Low-bit kernels: bit-exact packing, every compiled ISA path against the pure-torch oracle, the fallback.

Tolerances: the kernels (and their pure-torch twin ``integer_matmul``) quantise activations to int8 per row exactly as ``quantize_activations`` does and
sum each group in int32 (exact), so against the float64 oracle with the same activation rounding they
differ only by float32 rounding of the scaled group sums: max error <= 1e-5 of the output's max. Against
the plain fp32 dequantise-and-matmul the difference is the activation rounding itself, whose relative
error is about ``sqrt(mean(delta^2)) / rms(x)`` with ``delta`` uniform in half a code (<= 1/(2*127) of the
row's absmax): for Gaussian x (absmax ~ 3.5 rms over 1k features) that is ~0.8%, so 3% of the norm.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from nnforge.compress.quantize import kernels as qk
from nnforge.compress.quantize.kernels._build import ISA_NAMES
from nnforge.errors import ConfigError

# (fmt, group_size, symmetric)
CASES = [("int8", None, True), ("int8", 32, True), ("int4", 32, True), ("int4", 128, False), ("int4", 256, True),
         ("int2", 64, False), ("int2", 128, True), ("ternary", None, True), ("ternary", 64, True),
         ("binary", None, True), ("binary", 128, True)]


def compiled_isas() -> list[str]:
    """The ISA paths this machine and compiler can build; [] with no compiler (built in parallel)."""
    isas = ("avx512", "avx2", "scalar")
    with ThreadPoolExecutor(len(isas)) as pool:
        names = list(pool.map(qk.backend, isas))
    return [isa for isa, name in zip(isas, names, strict=True) if name in ISA_NAMES.values()]


ISAS = compiled_isas()


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("K", [512, 640, 1000])
def test_pack_unpack_round_trip_is_bit_exact(bits: int, K: int) -> None:
    g = torch.Generator().manual_seed(bits * K)
    codes = torch.randint(0, 1 << bits, (7, K), generator=g, dtype=torch.uint8)
    packed = qk.pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (7, qk.padded_k(K, bits, None) * bits // 8)
    assert torch.equal(qk.unpack(packed, bits, K), codes)


def test_layout_is_the_documented_one() -> None:
    # int4: byte j of a 64-byte block holds weight j (low nibble) and weight j + 64 (high nibble)
    codes = torch.zeros(1, 128, dtype=torch.uint8)
    codes[0, 3], codes[0, 64 + 3] = 5, 9
    assert qk.pack(codes, 4)[0, 3].item() == 5 | (9 << 4)
    # binary: bit p of byte j is weight 64 * p + j
    codes = torch.zeros(1, 512, dtype=torch.uint8)
    codes[0, 64 * 6 + 10] = 1
    assert qk.pack(codes, 1)[0, 10].item() == 1 << 6


def test_pack_rejects_out_of_range_codes_and_bad_groups() -> None:
    with pytest.raises(ConfigError, match="codes in \\[0, 16\\)"):
        qk.pack(torch.full((2, 128), 16), 4)
    with pytest.raises(ConfigError, match="not a multiple of group_size"):
        qk.quantize_weight(torch.randn(4, 96), "int4", group_size=64)
    with pytest.raises(ConfigError, match="symmetric only"):
        qk.quantize_weight(torch.randn(4, 128), "ternary", 64, symmetric=False)


def test_from_int_matches_dequantized_values() -> None:
    q = torch.randint(-8, 8, (5, 256))
    scales = torch.rand(5, 4) + 0.5
    w = qk.from_int(q, scales, "int4", 64)
    expect = q.float() * scales.half().float().repeat_interleave(64, dim=1)
    assert torch.equal(w.dequantize(), expect)


@pytest.mark.skipif(not ISAS, reason="no C++ compiler: only the torch fallback exists here")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("fmt", "gs", "sym"), CASES)
@pytest.mark.parametrize("M", [1, 3])
def test_kernel_matches_oracle(isa: str, fmt: str, gs: int | None, sym: bool, M: int) -> None:
    torch.manual_seed(0)
    W, x = torch.randn(70, 1024), torch.randn(M, 1024)  # N=70: a partial chunk of rows
    w = qk.quantize_weight(W, fmt, gs, symmetric=sym)
    y = qk.qgemv(x, w, isa=isa)
    oracle = qk.reference_matmul(x, w, dtype=torch.float64)
    assert y.shape == (M, 70)
    assert (y - oracle).abs().max() <= 1e-5 * oracle.abs().max()
    plain = qk.reference_matmul(x, w, act_quant=False)
    assert (y - plain).norm() <= 0.03 * plain.norm()


@pytest.mark.skipif(not ISAS, reason="no C++ compiler")
@pytest.mark.parametrize("fmt", ["int4", "binary"])
def test_odd_k_is_padded_and_large_batch_tiles(fmt: str) -> None:
    torch.manual_seed(1)
    W, x = torch.randn(33, 1088), torch.randn(2, 3, 1088)  # K = 1088: not a multiple of 512 or 128; M = 6
    w = qk.quantize_weight(W, fmt, 64)
    assert w.Kp > w.K and w.codes().shape == (33, 1088)
    y = qk.qgemv(x, w)
    assert y.shape == (2, 3, 33)
    oracle = qk.reference_matmul(x, w, dtype=torch.float64)
    assert (y - oracle).abs().max() <= 1e-5 * oracle.abs().max()


def test_torch_fallback_is_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNFORGE_KERNELS", "torch")
    assert qk.backend() == "torch"
    torch.manual_seed(2)
    w = qk.quantize_weight(torch.randn(40, 256), "int2", 32, symmetric=False)
    x = torch.randn(3, 256)
    assert torch.equal(qk.qgemv(x, w), qk.integer_matmul(x, w))  # the kernels' arithmetic, in torch
    oracle = qk.reference_matmul(x, w, dtype=torch.float64)
    assert (w.matmul(x) - oracle).abs().max() <= 1e-6 * oracle.abs().max()  # float64 sums, one rounding


def test_no_compiler_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnforge.compress.quantize.kernels import _build

    monkeypatch.setattr(_build, "_compiler", lambda: None)
    _build._load.cache_clear()
    _build._compile.cache_clear()
    try:
        assert qk.backend("avx2") == "torch"
    finally:
        _build._load.cache_clear()
        _build._compile.cache_clear()


def test_large_batch_is_the_same_arithmetic_as_batch_one() -> None:
    """Batches above 64 rows took an fp32 dequantise-and-matmul: the same row differed by ~1% at 64 vs 65."""
    torch.manual_seed(3)
    w = qk.quantize_weight(torch.randn(16, 128), "int8", None)
    x = torch.randn(300, 128)
    y = qk.qgemv(x, w)
    assert torch.equal(qk.qgemv(x[64:65], w), y[64:65])
    oracle = qk.reference_matmul(x, w, dtype=torch.float64)
    assert (y - oracle).abs().max() <= 1e-5 * oracle.abs().max()
    plain = x @ w.dequantize().T  # the activation rounding is there at every batch size
    assert (y - plain).abs().max() > 1e-4 * plain.abs().max()


@pytest.mark.parametrize("isa", [*ISAS, "torch"])
def test_non_contiguous_packed_weight_gives_the_contiguous_result(isa: str) -> None:
    """A strided view of the packed bytes was read as dense memory: relative error ~3, no error raised."""
    torch.manual_seed(4)
    w = qk.quantize_weight(torch.randn(40, 512), "int4", 64, symmetric=False)
    data_t = torch.empty(w.data.shape[1], w.data.shape[0], dtype=torch.uint8).T  # same shape, strided
    data_t.copy_(w.data)
    scales_t = torch.empty(w.scales.shape[1], w.scales.shape[0], dtype=torch.float16).T
    scales_t.copy_(w.scales)
    assert not data_t.is_contiguous() and not scales_t.is_contiguous()
    strided = qk.PackedWeight(w.fmt, data_t, scales_t, w.zeros, w.N, w.K, w.group_size)
    x = torch.randn(3, 512)
    assert torch.equal(qk.qgemv(x, strided, isa=isa), qk.qgemv(x, w, isa=isa))
    assert torch.equal(torch.ops.nnforge.qgemm(x, data_t, scales_t, w.zeros, w.fmt, w.N, w.K, w.group_size, isa, 0),
                       qk.qgemv(x, w, isa=isa))


def test_inputs_are_checked_at_the_boundary() -> None:
    w = qk.quantize_weight(torch.randn(8, 128), "int4", 32)
    with pytest.raises(ConfigError, match="floating-point"):
        qk.qgemv(torch.ones(1, 128, dtype=torch.int32), w)
    with pytest.raises(ConfigError, match="expects K=128"):
        qk.qgemv(torch.randn(2, 64), w)
    with pytest.raises(ConfigError, match="do not fit"):  # the raw op refuses bytes of the wrong shape
        torch.ops.nnforge.qgemm(torch.randn(1, 128), w.data[:, :32].contiguous(), w.scales, None, "int4", 8, 128,
                                32, "", 0)
    with pytest.raises(ConfigError, match="PackedWeight data must be uint8"):
        qk.PackedWeight(w.fmt, w.data.to(torch.int8), w.scales, None, w.N, w.K, w.group_size)
    assert qk.qgemv(torch.randn(1, 128, dtype=torch.bfloat16), w).dtype == torch.float32


def test_state_dict_round_trip_and_wrong_k() -> None:
    w = qk.quantize_weight(torch.randn(8, 256), "int4", 64, symmetric=False)
    again = qk.PackedWeight.from_state_dict(w.state_dict(), w.metadata())
    assert torch.equal(again.dequantize(), w.dequantize())
    with pytest.raises(ConfigError, match="expects K=256"):
        qk.qgemv(torch.randn(1, 128), w)
    with pytest.raises(ConfigError, match="layout version"):
        qk.PackedWeight.from_state_dict(w.state_dict(), {**w.metadata(), "layout_version": "0"})


@pytest.mark.parametrize("isa", [*ISAS, "torch"])
@pytest.mark.parametrize(("fmt", "gs", "K"), [("int8", None, 200), ("int4", 64, 256), ("int4", None, 200)])
def test_nan_and_inf_inputs_propagate_as_in_fp32(isa: str, fmt: str, gs: int | None, K: int) -> None:
    """max drops NaN and (int8)NaN is undefined: a NaN input came out of the packed kernel as finite numbers.
    Only the row holding it is computed in fp32; the others are not affected by it."""
    torch.manual_seed(0)
    w = qk.quantize_weight(torch.randn(48, K), fmt, gs)
    for bad in (float("nan"), float("inf"), float("-inf")):
        for col in (5, K - 1):  # inside the vectorised part, and (K = 200) in the scalar tail
            x = torch.randn(3, K)
            x[1, col] = bad
            got = qk.qgemv(x, w, isa=isa)
            want = qk.reference_matmul(x[1:2], w, act_quant=False)  # what nn.Linear on the dequantized weight gives
            torch.testing.assert_close(got[1:2], want, equal_nan=True)
            assert not torch.isfinite(got[1]).any()
            # the finite rows keep the int8 arithmetic they have in any other batch
            assert torch.equal(got[[0, 2]], qk.qgemv(x[[0, 2]], w, isa=isa))
    x = torch.randn(3, K)
    assert torch.isfinite(qk.qgemv(x, w, isa=isa)).all()  # finite input keeps the int8 path
    torch.testing.assert_close(qk.qgemv(x, w, isa=isa), qk.reference_matmul(x, w), rtol=1e-5, atol=1e-4)


def test_per_row_int8_sums_that_would_overflow_int32_take_the_reference_path():
    from nnforge.compress.quantize.kernels import quantize_weight, reference_matmul
    from nnforge.compress.quantize.kernels._dispatch import fits_int32

    K = 70_000  # one scale per row: codes up to 255 times activations up to 127 pass 2**31 after ~66,000 inputs
    w = torch.ones(2, K)
    w[1] = -1
    pw = quantize_weight(w, "int8", None)
    assert not fits_int32(pw) and fits_int32(quantize_weight(torch.ones(2, 4096), "int8", None))
    x = torch.ones(1, K)
    y = qk.qgemv(x, pw)
    assert torch.allclose(y, reference_matmul(x, pw, dtype=torch.float64).float(), rtol=1e-4)
    assert y[0, 0] > 0 > y[0, 1]  # the kernel's int32 sums wrapped to the wrong sign before
