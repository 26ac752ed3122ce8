"""Calibrators (RTN, HQQ, GPTQ, AWQ, SmoothQuant, Hadamard) against RTN measured on the same data.

The test layer is hard on RTN on purpose: a (128, 256) weight of scale 0.02 with 20 outlier weights 15x
larger (they stretch their groups' ranges), and inputs ``X = Z A`` (correlated channels, which GPTQ's error
feedback exploits) with 4 channels 20x larger (the salient channels AWQ protects and the outliers that
break per-tensor int8). Output errors are measured on held-out inputs from the same distribution, not on
the calibration rows. Measured ratios to RTN (seed 0, int4/int3 symmetric and int2/int4 asymmetric, g64):
GPTQ output error 0.53-0.65, AWQ 0.62-0.68, HQQ weight error 0.79-0.96; the worst over seeds 1-5 were
GPTQ 0.72, AWQ 0.69, HQQ 0.97 (int4 asymmetric). The asserted bounds (0.9 for GPTQ and AWQ, 0.98 for HQQ)
leave room for other BLAS builds while still failing for any calibrator that falls back to plain RTN.
W8A8 (per-tensor int8 activations, per-channel int8 weights): SmoothQuant 0.22 and a Hadamard rotation
0.16 of the unsmoothed error, asserted below 0.5.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnforge.compress.quantize.calibrate import (
    LayerStats,
    awq,
    collect_stats,
    fake_quant_int8_per_tensor,
    fake_quant_int8_per_token,
    gptq,
    hadamard,
    hqq,
    rtn,
    smooth_scales,
)
from nnforge.compress.quantize.kernels import FORMATS, PackedWeight, quantize_weight
from nnforge.errors import ConfigError

N, K = 128, 256


def _layer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight with outlier weights, calibration inputs and held-out inputs with outlier channels."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(N, K, generator=g) * 0.02
    W.view(-1)[torch.randint(0, N * K, (20,), generator=g)] *= 15
    A = torch.randn(K, K, generator=g) / K**0.5

    def acts(n: int) -> torch.Tensor:
        X = torch.randn(n, K, generator=g) @ A
        X[:, :4] *= 20
        return X

    return W, acts(512), acts(512)


W, X, X_TEST = _layer()
H = X.T.double() @ X.double() / X.shape[0]
STATS = LayerStats(H, X.shape[0], X.abs().mean(0), X.abs().amax(0), X)


def out_err(W_hat: torch.Tensor, s: torch.Tensor | None = None, X: torch.Tensor = X_TEST) -> float:
    """``||X Wᵀ - (X / s) Ŵᵀ||`` on held-out inputs."""
    Xs = X if s is None else X / s
    return float((X @ W.T - Xs @ W_hat.T).norm())


def rtn_err(fmt: str, symmetric: bool) -> float:
    return out_err(rtn(W, fmt, 64, symmetric=symmetric).dequantize())


def _cases() -> list:
    """int4 and int3 symmetric, int2 asymmetric, all with groups of 64."""
    out = []
    for fmt, sym in [("int4", True), ("int3", True), ("int2", False)]:
        marks = [pytest.mark.skipif("int3" not in FORMATS, reason="int3 format not available")] if fmt == "int3" else []
        out.append(pytest.param(fmt, sym, marks=marks, id=f"{fmt}-{'sym' if sym else 'asym'}-g64"))
    return out


# ----------------------------------------------------------------------------------------------------- HQQ


@pytest.mark.parametrize(("fmt", "symmetric"), _cases() + [pytest.param("int4", False, id="int4-asym-g64")])
def test_hqq_lowers_weight_error_below_rtn(fmt: str, symmetric: bool) -> None:
    e_rtn = float((W - rtn(W, fmt, 64, symmetric=symmetric).dequantize()).norm())
    e_hqq = float((W - hqq(W, fmt, 64, symmetric=symmetric).dequantize()).norm())
    assert e_hqq < 0.98 * e_rtn, (e_hqq / e_rtn)


@pytest.mark.parametrize("group_size", [32, None])
@pytest.mark.parametrize(("fmt", "symmetric"), [("int8", True), ("int4", False), ("int2", True), ("ternary", True),
                                                ("binary", True)])
def test_hqq_is_never_worse_than_rtn_in_any_group(fmt: str, symmetric: bool, group_size: int | None) -> None:
    w = W[:16]
    G = group_size or K
    e_rtn = (w - rtn(w, fmt, group_size, symmetric=symmetric).dequantize()).pow(2).view(16, -1, G).sum(-1)
    e_hqq = (w - hqq(w, fmt, group_size, symmetric=symmetric).dequantize()).pow(2).view(16, -1, G).sum(-1)
    assert bool((e_hqq <= e_rtn).all())


def test_hqq_default_mode_follows_the_format() -> None:
    assert hqq(W[:8], "int4", 64).zeros is not None  # asymmetric where the format has zero points
    assert hqq(W[:8], "ternary", 64).zeros is None  # symmetric-only formats stay symmetric
    assert hqq(W[:8], "int4", 64, symmetric=True).zeros is None


# ---------------------------------------------------------------------------------------------------- GPTQ


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize(("fmt", "symmetric"), _cases())
def test_gptq_lowers_output_error_below_rtn(fmt: str, symmetric: bool, act_order: bool) -> None:
    pw = gptq(W, H, fmt, 64, symmetric=symmetric, act_order=act_order)
    assert out_err(pw.dequantize()) < 0.9 * rtn_err(fmt, symmetric)


@pytest.mark.parametrize(("fmt", "symmetric", "group_size"), [("int4", True, 64), ("int2", False, 32),
                                                              ("ternary", True, None), ("binary", True, 128)])
def test_gptq_with_identity_hessian_is_rtn(fmt: str, symmetric: bool, group_size: int | None) -> None:
    # H = I: no error feedback, so the scales and codes are RTN's (up to round-to-nearest ties with the
    # fp16-rounded scale GPTQ uses; none occur here)
    eye = torch.eye(K, dtype=torch.float64)
    a = gptq(W, eye, fmt, group_size, symmetric=symmetric, damp=0.0).dequantize()
    assert torch.equal(a, rtn(W, fmt, group_size, symmetric=symmetric).dequantize())


def test_gptq_singular_hessian_raises_a_clear_error() -> None:
    ones = torch.ones(K, K, dtype=torch.float64)  # rank 1, no zero diagonal: Cholesky fails at the second pivot
    with pytest.raises(ConfigError, match=r"singular or not positive definite.*damp=0.0.*larger 'damp'"):
        gptq(W, ones, "int4", 64, damp=0.0)
    gptq(W, ones, "int4", 64, damp=0.01)  # damping makes it positive definite


def test_gptq_dead_columns_give_zero_weights_and_no_nan() -> None:
    Xd = X.clone()
    Xd[:, 10:20] = 0
    Hd = Xd.T.double() @ Xd.double() / Xd.shape[0]
    for fmt, sym in [("int4", True), ("int4", False)]:
        Wq = gptq(W, Hd, fmt, 64, symmetric=sym).dequantize()
        assert bool(torch.isfinite(Wq).all())
        assert bool((Wq[:, 10:20] == 0).all())
        assert out_err(Wq, X=Xd) < out_err(rtn(W, fmt, 64, symmetric=sym).dequantize(), X=Xd)


# ----------------------------------------------------------------------------------------------------- AWQ


@pytest.mark.parametrize(("fmt", "symmetric"), _cases())
def test_awq_lowers_output_error_below_rtn(fmt: str, symmetric: bool) -> None:
    pw, s = awq(W, STATS, fmt, 64, symmetric=symmetric)
    assert s.shape == (K,) and s.dtype == torch.float32
    assert out_err(pw.dequantize(), s) < 0.9 * rtn_err(fmt, symmetric)


def test_awq_with_one_grid_point_is_rtn_and_takes_a_quantizer() -> None:
    pw, s = awq(W, STATS, "int4", 64, grid=1)
    assert bool((s == 1).all()) and torch.equal(pw.dequantize(), rtn(W, "int4", 64).dequantize())
    calls = []

    def quantizer(w: torch.Tensor) -> PackedWeight:
        calls.append(w)
        return hqq(w, "int4", 64, iters=2)

    pw, s = awq(W, STATS, "int4", 64, grid=3, quantizer=quantizer)
    assert len(calls) == 3
    # the chosen scale is one of those tried, and the result is that quantizer's
    assert any(torch.equal(pw.dequantize(), hqq(c, "int4", 64, iters=2).dequantize()) for c in calls)


# ------------------------------------------------------------------------------------ SmoothQuant, Hadamard


def w8a8_err(Xa: torch.Tensor, Wa: torch.Tensor) -> float:
    """Output error of int8 per-tensor activations (static scale) and int8 per-output-channel weights."""
    xq = fake_quant_int8_per_tensor(Xa, Xa.abs().max() / 127)
    wq = quantize_weight(Wa, "int8", None).dequantize()
    return float((X @ W.T - xq @ wq.T).norm())


def test_smoothquant_lowers_w8a8_error() -> None:
    s = smooth_scales(STATS.abs_max, W, alpha=0.5)
    assert s.shape == (K,) and bool(torch.isfinite(s).all()) and bool((s > 0).all())
    assert torch.allclose((X / s) @ (W * s).T, X @ W.T, atol=1e-4)
    assert w8a8_err(X / s, W * s) < 0.5 * w8a8_err(X, W)


def test_smooth_scales_survive_zero_channels() -> None:
    w = W.clone()
    w[:, 0] = 0
    a = STATS.abs_max.clone()
    a[1] = 0
    s = smooth_scales(a, w)
    assert bool(torch.isfinite(s).all()) and bool((s > 0).all())


def test_hadamard_is_orthogonal_and_lowers_w8a8_error() -> None:
    Hm = hadamard(K)
    assert torch.allclose(Hm @ Hm.T, torch.eye(K), atol=1e-6)
    assert torch.allclose((X @ Hm) @ (W @ Hm).T, X @ W.T, atol=1e-3)
    assert w8a8_err(X @ Hm, W @ Hm) < 0.5 * w8a8_err(X, W)
    assert torch.equal(hadamard(1), torch.ones(1, 1))
    for bad in (0, 3, 12, 2.0):
        with pytest.raises(ConfigError, match="power of 2"):
            hadamard(bad)  # type: ignore[arg-type]


def test_fake_quant_int8_rounds_half_to_even_and_keeps_zero_rows() -> None:
    x = torch.tensor([[127.0, 0.5, 1.5, -2.5], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(fake_quant_int8_per_token(x), torch.tensor([[127.0, 0.0, 2.0, -2.0], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(fake_quant_int8_per_tensor(x, 1.0), torch.tensor([[127.0, 0.0, 2.0, -2.0], [0, 0, 0, 0.0]]))
    assert torch.equal(fake_quant_int8_per_tensor(x * 3, 1.0)[0, 0], torch.tensor(127.0))  # clamped
    with pytest.raises(ConfigError, match="'scale'"):
        fake_quant_int8_per_tensor(x, 0.0)


# ------------------------------------------------------------------------------------------- collect_stats


def test_collect_stats_matches_hand_computed_hessian_and_removes_hooks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    batches = [torch.randn(3, 5, 16) for _ in range(3)]
    stats = collect_stats(model, batches, sample_rows=10)
    assert set(stats) == {"0", "2"}
    x0 = torch.cat([b.reshape(-1, 16) for b in batches]).double()
    with torch.no_grad():
        x2 = torch.relu(model[0](x0.float())).double()
    for name, x in (("0", x0), ("2", x2)):
        st = stats[name]
        assert st.n == 45 and st.hessian.dtype == torch.float64
        torch.testing.assert_close(st.hessian, x.T @ x / 45)
        torch.testing.assert_close(st.abs_mean, x.abs().mean(0).float())
        torch.testing.assert_close(st.abs_max, x.abs().amax(0).float())
        assert st.sample.shape == (10, x.shape[1]) and st.sample.dtype == torch.float32
        # sampled rows are distinct rows of the input
        match = (st.sample[:, None, :] - x[None].float()).abs().amax(-1) < 1e-6
        assert bool((match.sum(1) >= 1).all()) and len({int(i) for i in match.float().argmax(1)}) == 10
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_collect_stats_tuple_batches_modules_forward_and_errors() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    stats = collect_stats(model, [(torch.randn(6, 4),)], modules=["1"])
    assert list(stats) == ["1"] and stats["1"].n == 6
    stats = collect_stats(model, [{"x": torch.randn(2, 4)}], forward=lambda m, b: m(b["x"]))
    assert stats["0"].n == 2

    def boom(m: nn.Module, b: torch.Tensor) -> None:
        m(b)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        collect_stats(model, [torch.randn(2, 4)], forward=boom)
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ConfigError, match="'modules'.*nope"):
        collect_stats(model, [torch.randn(2, 4)], modules=["nope"])
    with pytest.raises(ConfigError, match="No calibration tokens"):
        collect_stats(model, [])
    with pytest.raises(ConfigError, match="'batches'"):
        collect_stats(model, torch.randn(2, 4))


# ------------------------------------------------------------------------------------ packing and arguments


@pytest.mark.parametrize("name", ["rtn", "hqq", "hqq-asym", "gptq", "gptq-asym", "awq"])
def test_packed_weight_round_trips_through_its_state_dict(name: str) -> None:
    w = W[:32]
    if name == "rtn":
        pw = rtn(w, "int4", 64)
    elif name.startswith("hqq"):
        pw = hqq(w, "int4", 64, symmetric=name == "hqq")
    elif name.startswith("gptq"):
        pw = gptq(w, H, "int4", 64, symmetric=name == "gptq")
    else:
        pw, _ = awq(w, STATS, "int4", 64, grid=4)
    assert isinstance(pw, PackedWeight)
    assert (pw.zeros is not None) == name.endswith("asym")
    back = PackedWeight.from_state_dict(pw.state_dict(), pw.metadata())
    assert torch.equal(back.dequantize(), pw.dequantize())


def test_bad_arguments_raise_config_errors_naming_the_parameter() -> None:
    with pytest.raises(ConfigError, match="'fmt'"):
        hqq(W, "int5", 64)
    with pytest.raises(ConfigError, match="'group_size'"):
        gptq(W, H, "int4", 48)
    with pytest.raises(ConfigError, match="symmetric only"):
        hqq(W, "ternary", 64, symmetric=False)
    with pytest.raises(ConfigError, match="'hessian'"):
        gptq(W, H[:10, :10], "int4", 64)
    with pytest.raises(ConfigError, match="'damp'"):
        gptq(W, H, "int4", 64, damp=-1.0)
    with pytest.raises(ConfigError, match="'p'"):
        hqq(W, "int4", 64, p=0.0)
    with pytest.raises(ConfigError, match="'grid'"):
        awq(W, STATS, "int4", 64, grid=0)
    with pytest.raises(ConfigError, match="'w'"):
        hqq(W[0], "int4", 64)
    with pytest.raises(ConfigError, match="'alpha'"):
        smooth_scales(STATS.abs_max, W, alpha=1.5)


def test_non_finite_weights_and_calibration_are_named_and_nothing_changes():
    import pytest
    from torch import nn

    from nnforge.compress import Int8WeightOnlyConfig, W8A8Config, quantize_
    from nnforge.errors import ConfigError, DataError

    def mk():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))

    bad = mk()
    bad[2].weight.data[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="2: the weight holds NaN"):
        quantize_(bad, Int8WeightOnlyConfig())
    assert isinstance(bad[0], nn.Linear)  # atomic: the first layer was not replaced either
    with pytest.raises(DataError, match="layer 0 hold NaN"):
        quantize_(mk(), W8A8Config(activations="static"), calibration=[torch.full((4, 16), float("nan"))])
    with pytest.raises(DataError, match="layer 0 takes inputs with 16 features"):
        quantize_(mk(), W8A8Config(activations="static"), calibration=[torch.zeros(4, 15)])
    with pytest.raises(ConfigError, match="every calibration input of this layer was zero"):
        quantize_(mk(), W8A8Config(activations="static", smoothing="none"), calibration=[torch.zeros(4, 16)])


@pytest.mark.parametrize(("fmt", "symmetric", "act_order"), [("int8", True, False), ("int4", True, True),
                                                             ("int4", False, False), ("ternary", True, False)])
def test_gptq_keeps_the_zeros_of_a_pruned_weight(fmt: str, symmetric: bool, act_order: bool) -> None:
    # prune, then quantize: the error feedback must not turn pruned weights back into non-zeros
    g = torch.Generator().manual_seed(3)
    pruned = W * (torch.rand(W.shape, generator=g) < 0.5)
    Wq = gptq(pruned, H, fmt, 64, symmetric=symmetric, act_order=act_order).dequantize()
    assert bool((Wq[pruned == 0] == 0).all())
    def err(w_hat: torch.Tensor) -> float:
        return float((X_TEST @ pruned.T - X_TEST @ w_hat.T).norm())

    assert err(Wq) < err(rtn(pruned, fmt, 64, symmetric=symmetric).dequantize())  # and still better than RTN
