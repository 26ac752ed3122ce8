"""Sparse kernels and layers: storage layouts, every compiled ISA path against the pure-torch oracle, the layer
that runs sparse only where measured faster, and saved files holding only what pruning kept.

Tolerances: fp32 formats sum the same fp32 products as ``x @ dense(W).T`` in another order, so against the
float64 oracle the error is float32 rounding: <= 1e-5 of the row's largest output. int8 formats sum exact
integer products (int8 activations per row, as the quantized kernels), so they match the oracle to a few float32
ulps (<= 1e-6 of the row max).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nnforge.compress import apply_
from nnforge.compress.prune.kernels import (
    SparseWeight,
    reference_sparse_mm,
    sparse_backend,
    sparse_mm,
    sparsify_weight,
)
from nnforge.compress.prune.kernels._ops import sparse_mm_op
from nnforge.compress.prune.sparse import SparseLinear, SparsifyConfig
from nnforge.errors import ConfigError

FORMATS = ["2:4", "2:4-int8", "csr", "csr-int8"]
ISAS = [isa for isa in ("avx2", "scalar") if sparse_backend(isa) != "torch"] + ["torch"]


def pruned(n: int, k: int, fmt: str, seed: int = 0, density: float = 0.1) -> torch.Tensor:
    """A random weight pruned 2:4 (largest 2 of each 4, K zero-padded) or to ``density`` unstructured."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    if fmt.startswith("csr"):
        return w * (torch.rand(n, k, generator=g) < density)
    kp = -(-k // 4) * 4
    full = torch.zeros(n, kp)
    full[:, :k] = w
    grp = full.view(n, -1, 4)
    keep = torch.zeros_like(grp).scatter_(2, grp.abs().topk(2, dim=-1).indices, 1.0)
    return (grp * keep).view(n, kp)[:, :k].contiguous()


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((y - ref).abs().amax(-1) / ref.abs().amax(-1).clamp_min(1e-30)).max())


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k", [64, 100, 200])
def test_sparsify_stores_exactly_the_kept_weights(fmt: str, k: int) -> None:
    w = pruned(19, k, fmt)
    sw = sparsify_weight(w, fmt)
    if fmt in ("2:4", "csr"):
        assert torch.equal(sw.dense(), w)
    else:  # int8 codes times the row's absmax / 127 scale: at most half a step off
        assert float((sw.dense() - w).abs().amax(1).div(w.abs().amax(1)).max()) <= 0.5 / 127 + 1e-6
        assert not ((sw.dense() != 0) & (w == 0)).any()  # (a kept value may round to code 0)
    if fmt.startswith("csr"):
        assert sw.nnz == int((w != 0).sum())


def test_stored_bytes_are_only_what_is_kept() -> None:
    n, k = 32, 256
    assert sparsify_weight(pruned(n, k, "2:4"), "2:4").nbytes == n * k // 2 * 4 + n * k // 8  # values + 2-bit positions
    assert sparsify_weight(pruned(n, k, "2:4"), "2:4-int8").nbytes == n * k // 2 + n * k // 8 + 4 * n
    w = pruned(n, k, "csr")
    nnz = int((w != 0).sum())
    assert sparsify_weight(w, "csr").nbytes == 6 * nnz + 8 * (n + 1)
    assert sparsify_weight(w, "csr-int8").nbytes == 3 * nnz + 8 * (n + 1) + 4 * n


def test_2_4_layout_is_the_documented_one() -> None:
    # fp32: block of 4 groups, values in group order (0, 2, 1, 3); value e's position in bits 2e of a uint16
    w = torch.zeros(1, 16)
    w[0, 4 * 2 + 3] = 7.0  # group 2, position 3: value 3 of the block (slot 1; slot 0 a filler zero at position 0)
    sw = sparsify_weight(w, "2:4")
    assert sw.values[0].tolist() == [0, 0, 0, 7.0, 0, 0, 0, 0]
    word = sw.indices[0, 0].item() | sw.indices[0, 1].item() << 8
    assert (word >> 6) & 3 == 3 and (word >> 4) & 3 == 0
    # int8: value b = 8p + j has its position in bits 2p of index byte j; group 8 slot 1 is b = 9 (L = 0, t = 9)
    w = torch.zeros(1, 64)
    w[0, 4 * 8 + 2] = 1.0
    sw = sparsify_weight(w, "2:4-int8")
    assert sw.values[0, 9].item() == 127 and int(sw.values.abs().sum()) == 127
    assert (sw.indices[0, 1].item() >> 2) & 3 == 2


def test_2_4_refuses_a_denser_weight_and_wide_k() -> None:
    w = pruned(4, 64, "2:4")
    w[1, 0:3] = 1.0
    with pytest.raises(ConfigError, match="2:4 first"):
        sparsify_weight(w, "2:4")
    with pytest.raises(ConfigError, match="65536"):
        sparsify_weight(torch.zeros(1, 65537), "csr")
    csr = sparsify_weight(pruned(4, 64, "csr", density=0.5), "csr")
    with pytest.raises(ConfigError, match="column index"):  # a corrupted file never reaches the kernel
        SparseWeight("csr", csr.values, csr.indices + 64, csr.row_ptr, None, 4, 64)
    with pytest.raises(ConfigError, match="values must be"):
        SparseWeight("2:4", torch.zeros(4, 32, dtype=torch.int8), torch.zeros(4, 8, dtype=torch.uint8), None, None, 4, 64)


# ---------------------------------------------------------------- kernels


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [100, 256])
def test_kernel_matches_the_oracle(fmt: str, isa: str, k: int) -> None:
    sw = sparsify_weight(pruned(70, k, fmt, seed=k), fmt)
    x = torch.randn(7, k, generator=torch.Generator().manual_seed(1))
    ref = reference_sparse_mm(x, sw, dtype=torch.float64)
    y = sparse_mm(x, sw, isa=isa)
    assert rel_err(y, ref) <= (1e-5 if fmt in ("2:4", "csr") else 1e-6)
    # a row's output does not depend on the batch it came in: bit for bit in the kernels (tiles of 4, 2 and 1
    # rows run the same operations per row), to 1e-5 in torch (BLAS blocks other batch sizes differently)
    for m in (1, 2, 5):
        if isa == "torch":
            assert rel_err(sparse_mm(x[:m], sw, isa=isa), y[:m]) <= 1e-5
        else:
            assert torch.equal(sparse_mm(x[:m], sw, isa=isa), y[:m])


@pytest.mark.parametrize("fmt", ["2:4-int8", "csr-int8", "2:4"])
def test_non_finite_activations_propagate(fmt: str) -> None:
    sw = sparsify_weight(pruned(64, 128, fmt), fmt)
    x = torch.randn(3, 128)
    x[1, 5] = float("nan")
    y = sparse_mm(x, sw)
    assert torch.isnan(y[1]).any() and torch.isfinite(y[[0, 2]]).all()
    assert torch.allclose(y[[0, 2]], sparse_mm(x[[0, 2]], sw))


@pytest.mark.parametrize("fmt", ["2:4", "csr-int8"])
def test_custom_op_passes_opcheck_and_has_the_gradient_of_x(fmt: str) -> None:
    sw = sparsify_weight(pruned(64, 128, fmt), fmt)
    x = torch.randn(2, 128, requires_grad=True)
    args = (x, sw.values, sw.indices, sw.row_ptr, sw.scales, sw.fmt, sw.N, sw.K, "", 0)
    # (the first opcheck of a process spends ~20 s warming up torch's tracing; test_numerics' pays it in the suite)
    torch.library.opcheck(torch.ops.nnforge.sparse_mm.default, args)
    y = sparse_mm_op(*args)
    g = torch.randn_like(y)
    y.backward(g)
    assert x.grad is not None and torch.allclose(x.grad, g @ sw.dense(), atol=1e-5)


def test_wrong_inputs_are_refused() -> None:
    sw = sparsify_weight(pruned(8, 64, "2:4"), "2:4")
    with pytest.raises(ConfigError, match="K=64"):
        sparse_mm(torch.randn(1, 65), sw)
    with pytest.raises(ConfigError, match="floating-point"):
        sparse_mm(torch.ones(1, 64, dtype=torch.int64), sw)


# ---------------------------------------------------------------- the layer and the transform


def model_with_pruned_layers() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    with torch.no_grad():
        m[0].weight.copy_(pruned(64, 128, "2:4"))
        m[2].weight.copy_(pruned(32, 64, "csr", density=0.2))
    return m  # m[4] is dense: left as it is


def test_sparsify_picks_formats_and_keeps_the_outputs() -> None:
    m = model_with_pruned_layers()
    x = torch.randn(5, 128)
    ref = m(x).detach()
    report = apply_(m, SparsifyConfig(execute="sparse"))
    assert isinstance(m[0], SparseLinear) and m[0].fmt == "2:4"
    assert isinstance(m[2], SparseLinear) and m[2].fmt == "csr"
    assert isinstance(m[4], nn.Linear)
    assert report.config["data"]["plan"] == {"0": "2:4", "2": "csr"}
    assert dict(report.skipped)["4"].startswith("only")
    assert m[0].runs_sparse(1) and not m[0].runs_sparse(2)  # beyond the largest measured batch: dense
    assert rel_err(m(x[:1]).detach(), ref[:1]) <= 1e-5 and rel_err(m(x).detach(), ref) <= 1e-5
    assert "sparsity 50.0%" in report.changed[0].detail and report.bytes_after < report.bytes_before / 1.5


def test_a_layer_runs_sparse_only_where_its_measured_verdict_says_faster() -> None:
    layer = SparseLinear.from_sparse(sparsify_weight(pruned(64, 128, "2:4"), "2:4"), batch_sizes=(1, 8))
    verdicts = layer.measure(repeats=4)
    assert set(verdicts) == {1, 8}
    for b, v in verdicts.items():
        assert layer.runs_sparse(b) == (v["verdict"] == "faster")
        assert v["sparse_ms"] > 0 and v["dense_ms"] > 0
    layer.force(False)
    assert not layer.runs_sparse(1) and "saves file size here, not time" in layer.verdict
    x = torch.randn(3, 128)
    layer.force(True)
    sparse = layer(x)
    layer.force(False)
    assert rel_err(sparse, layer(x)) <= 1e-5  # dense and sparse execution: the same arithmetic


def test_int8_dense_path_is_the_dense_int8_kernel_on_the_same_codes() -> None:
    layer = SparseLinear.from_sparse(sparsify_weight(pruned(64, 128, "2:4"), "2:4-int8"))
    x = torch.randn(4, 128)
    layer.force(True)
    sparse = layer(x)
    layer.force(False)
    assert rel_err(sparse, layer(x)) <= 1e-5


def test_saved_file_holds_only_the_kept_bytes_and_rebuilds_from_the_plan(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = model_with_pruned_layers()
    cfg = SparsifyConfig(values="int8", execute="sparse")
    report = apply_(m, cfg)
    x = torch.randn(2, 128)
    y = m(x)
    state = {k: v.contiguous() for k, v in m.state_dict().items()}
    assert not any(k.startswith(("0.weight", "2.weight")) for k in state)
    save_file(state, tmp_path / "m.safetensors")
    from nnforge.config import load_config

    skeleton = model_with_pruned_layers()
    apply_(skeleton, load_config(report.config), skeleton=True)
    skeleton.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
    assert skeleton[2].sparse.nnz == m[2].sparse.nnz and skeleton[0].runs_sparse(1)
    assert torch.equal(skeleton(x), y)
    # a file of another format does not load silently into the skeleton
    other = model_with_pruned_layers()
    apply_(other, SparsifyConfig(plan={"0": "2:4", "2": "csr"}), skeleton=True)
    with pytest.raises(RuntimeError, match="saved weight is 2:4-int8"):
        other.load_state_dict(load_file(tmp_path / "m.safetensors"))


def test_explicit_format_skips_layers_that_do_not_fit() -> None:
    m = model_with_pruned_layers()
    report = apply_(m, SparsifyConfig(fmt="2:4", execute="dense"))
    assert isinstance(m[0], SparseLinear) and isinstance(m[2], nn.Linear)
    assert "not 2:4 sparse" in dict(report.skipped)["2"]
    with pytest.raises(ConfigError, match="plan"):
        apply_(model_with_pruned_layers(), SparsifyConfig(), skeleton=True)


def test_a_later_transform_lists_sparse_layers_as_left_alone() -> None:
    # a SparseLinear holds buffers, not parameters: without its transform_note a later quantize_ or prune_
    # would neither convert it nor say so
    from nnforge.compress import Int8WeightOnlyConfig, quantize_

    m = model_with_pruned_layers()
    apply_(m, SparsifyConfig(execute="sparse"))
    report = quantize_(m, Int8WeightOnlyConfig())
    skipped = dict(report.skipped)
    assert skipped["0"].startswith("SparseLinear: stored sparse by sparsify") and "2" in skipped
    assert [c.name for c in report.changed] == ["4"]  # the Linear sparsify left dense is quantized
