"""The numerics contract of quantized layers (docs/kernels.md, "Numerics"): a row's output does not depend on the
batch it came in, the grad mode or the path that computed it; and the packed matmul is a torch custom op
(``torch.ops.nnforge.qgemm``) that ``opcheck``, autograd and ``torch.compile`` accept.

Tolerance: for every row, ``max |a - b| <= 1e-5 * max |b|`` (:data:`RTOL`). The packed-kernel layers are
checked for bit-identity where the contract promises it (every path but AVX-512, whose row tiles change the
float order of group sums).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _tiny import EmbConvNet
from nnforge.compress import W8A8Config, quantize_
from nnforge.compress.quantize import kernels as qk
from nnforge.compress.quantize.weight_only.config import WeightOnlyConfig
from nnforge.compress.quantize.weight_only.layer import QuantizedLinear

RTOL = 1e-5
BATCHES = (1, 63, 64, 65, 256)
EXACT = qk.backend() != "avx512vnni"  # AVX2, scalar and torch paths: bit-identical rows

# (fmt, group_size, symmetric): every format, per row and grouped, asymmetric where the format allows it
FORMATS = [("int8", None, True), ("int8", 128, True), ("int4", None, True), ("int4", 32, True), ("int4", 128, False),
           ("int3", 64, True), ("int3", None, False), ("int2", 64, True), ("int2", None, False), ("int2", 128, False),
           ("ternary", None, True), ("ternary", 64, True), ("binary", None, True), ("binary", 128, True)]
MODES = ("inference", "no_grad", "grad")


def assert_rows_agree(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Per row: ``max |got - want| <= RTOL * max |want|``."""
    err = (got - want).abs().amax(-1)
    bound = RTOL * want.abs().amax(-1)
    worst = int((err - bound).argmax())
    assert bool((err <= bound).all()), f"{what}: row {worst} differs by {float(err[worst]):.3g} > {float(bound[worst]):.3g}"


def run(layer: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "inference":
        with torch.inference_mode():
            return layer(x).clone()
    if mode == "no_grad":
        with torch.no_grad():
            return layer(x)
    xg = x.clone().requires_grad_()
    y = layer(xg)
    y.sum().backward()  # the grad path must run backward, not only build the graph
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    return y.detach()


def check_batch_invariance(layer: nn.Module, x: torch.Tensor, *, exact: bool) -> None:
    with torch.no_grad():
        full = layer(x)  # (256, N): the reference rows
    for mode in MODES:
        for m in BATCHES:
            got = run(layer, x[:m], mode)
            what = f"batch {m}, {mode}"
            if exact:
                assert torch.equal(got, full[:m]), f"{what}: not bit-identical"
            else:
                assert_rows_agree(got, full[:m], what)


@pytest.mark.parametrize(("fmt", "gs", "sym"), FORMATS)
def test_weight_only_rows_agree_at_every_batch_size_and_grad_mode(fmt: str, gs: int | None, sym: bool) -> None:
    """The same row differed by ~1% at batch 64 (packed kernel) and 65 (fp32 dequantise-and-matmul)."""
    torch.manual_seed(0)
    w = qk.quantize_weight(torch.randn(48, 384), fmt, gs, symmetric=sym)
    layer = QuantizedLinear.from_packed(w, torch.randn(48))
    x = torch.randn(256, 384)
    x[::3] = torch.relu(x[::3]) + 0.25  # rows with a large mean: the zero-point correction is large there
    check_batch_invariance(layer, x, exact=EXACT)
    layer.kernel = False  # fp32 x @ Ŵᵀ for every batch: within the tolerance (BLAS blocking varies with M)
    check_batch_invariance(layer, x, exact=False)


@pytest.mark.parametrize("activations", ["dynamic", "static"])
@pytest.mark.parametrize("kernel", [True, False])
def test_w8a8_rows_agree_at_every_batch_size_and_grad_mode(activations: str, kernel: bool) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 32))
    calib = [torch.randn(32, 128) for _ in range(2)]
    quantize_(model, W8A8Config(activations=activations, kernel=kernel), calibration=calib)
    assert all(isinstance(model[i], QuantizedLinear) for i in (0, 2))
    # static activations multiply in float for every batch; dynamic ones are the kernel arithmetic when kernel=True
    check_batch_invariance(model, torch.randn(256, 128), exact=EXACT and kernel and activations == "dynamic")


@pytest.mark.parametrize("fmt", sorted(qk.FORMATS))
def test_quantized_model_first_row_equals_batch_one(fmt: str) -> None:
    """``quantize_(model, cfg)`` then ``model(x[:1])`` vs ``model(x)[:1]``: embedding, linear and conv layers."""
    torch.manual_seed(2)
    model = EmbConvNet().eval()
    quantize_(model, WeightOnlyConfig(fmt=fmt, group_size=32, modules=("linear", "embedding", "conv"),
                                      embedding_fmt=fmt, embedding_group_size=32))
    ids = torch.randint(0, 100, (256, 6))
    with torch.no_grad():
        full = model(ids)
        for m in BATCHES:
            assert_rows_agree(model(ids[:m]), full[:m], f"{fmt}, batch {m}")
    emb = model.emb
    with torch.no_grad():  # an embedding lookup unpacks the rows it reads: bit-identical whatever the batch
        assert torch.equal(emb(ids[:1]), emb(ids)[:1])


# ------------------------------------------------------------------------------------------- the custom op
OP_CASES = [("int4", 64, False), ("int8", None, True), ("binary", 128, True), ("ternary", None, True)]


@pytest.mark.parametrize(("fmt", "gs", "sym"), OP_CASES)
def test_qgemm_passes_opcheck(fmt: str, gs: int | None, sym: bool) -> None:
    torch.manual_seed(3)
    w = qk.quantize_weight(torch.randn(24, 256), fmt, gs, symmetric=sym)
    for x in (torch.randn(3, 256, requires_grad=True), torch.randn(2, 5, 256), torch.randn(1, 256)):
        args = (x, w.data, w.scales, w.zeros, w.fmt, w.N, w.K, w.group_size, "", 0)
        torch.library.opcheck(torch.ops.nnforge.qgemm.default, args)
        # eager qgemv skips the dispatcher when no graph is being built: the very same numbers
        assert torch.equal(torch.ops.nnforge.qgemm(*args), qk.qgemv(x.detach(), w))


def test_qgemm_fake_checks_shapes_and_meta_tensors_work() -> None:
    w = qk.quantize_weight(torch.randn(8, 128), "int4", 32)
    meta = qk.PackedWeight(w.fmt, w.data.to("meta"), w.scales.to("meta"), None, w.N, w.K, w.group_size)
    assert qk.qgemv(torch.randn(4, 3, 128, device="meta"), meta).shape == (4, 3, 8)
    with pytest.raises(RuntimeError, match="features"):
        torch.ops.nnforge.qgemm(torch.randn(2, 64, device="meta"), meta.data, meta.scales, None, "int4", 8, 128, 32,
                                "", 0)


def test_input_gradient_is_straight_through_the_dequantized_weight() -> None:
    torch.manual_seed(4)
    w = qk.quantize_weight(torch.randn(32, 256), "int4", 64, symmetric=False)
    layer = QuantizedLinear.from_packed(w, torch.randn(32))
    x = torch.randn(5, 256, requires_grad=True)
    g = torch.randn(5, 32)
    layer(x).backward(g)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, g @ w.dequantize(), rtol=1e-5, atol=1e-5)


def test_torch_compile_of_a_quantized_model_runs_the_op_and_its_gradient() -> None:
    """backend="aot_eager": the graph (with qgemm in it) and its backward are traced; inductor would also
    generate C++ for the torch parts around the op, a slow compile that adds nothing to this check."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 16))
    quantize_(model, WeightOnlyConfig(fmt="int4", group_size=32))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(7, 128)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(xc).sum().backward()
    model(xe).sum().backward()
    assert xc.grad is not None and xe.grad is not None
    assert torch.equal(xc.grad, xe.grad) and xc.grad.abs().sum() > 0
