"""Low-bit GEMV kernels against fp32 and peer int8/int4 kernels, batch 1, weights streamed from memory.

    PYTHONPATH=src python benchmarks/quantize/gemv.py --quick   # < 1 minute, quantize_kernels.quick.json
    PYTHONPATH=src python benchmarks/quantize/gemv.py           # full run, benchmarks/results/quantize_kernels.json

Every variant rotates through enough copies of its weights to exceed twice the last-level cache ("cold",
as in a real model where each layer's weights come from DRAM), and is also timed on one copy ("warm").
Variants (ours and peers: torch fp32, ``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``, ONNX Runtime
MatMulNBits) are interleaved in a shuffled order each round and medians taken. torchao is not installed
here, so it is not measured.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import spread, write_results  # noqa: E402
from nnforge.compress.quantize import kernels as qk  # noqa: E402

L3_BYTES = 32 * 2**20
SHAPES = [(4096, 4096), (11008, 4096)]
# (name, fmt, group_size, symmetric): "ours" in quick mode is the first of each format
OURS = [("int8_row", "int8", None, True, True), ("int4_g128", "int4", 128, True, True),
        ("int4_g32", "int4", 32, True, False), ("int2_g128_asym", "int2", 128, False, False),
        ("int2_g256_asym", "int2", 256, False, True),
        ("ternary_row", "ternary", None, True, True), ("binary_row", "binary", None, True, True),
        ("int8_g128", "int8", 128, True, False), ("int4_g128_asym", "int4", 128, False, False),
        ("int2_g64_asym", "int2", 64, False, False), ("ternary_g128", "ternary", 128, True, False),
        ("binary_g128", "binary", 128, True, False)]  # (name, fmt, group_size, symmetric, in quick mode)
ROUND_BUDGET_S = 0.05  # per variant and round: stop after this long (at least 2 calls)
FAMILY = {"int8": "int8", "int4": "int4", "int2": "int2", "ternary": "ternary", "binary": "binary"}


@dataclass
class Variant:
    """One thing timed: ``calls`` (one per weight copy), its weight bytes and what it is."""

    name: str
    kind: str  # "ours" | "peer" | "baseline"
    family: str  # int8, int4, ... or fp32
    nbytes: int
    calls: list[Callable[[], object]]
    warm: bool = False
    times: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def copies_for(nbytes: int) -> int:
    """Weight copies needed so that rotating through them streams more than twice the L3 cache."""
    return max(1, -(-2 * L3_BYTES // nbytes) + 1)


def with_copies(name: str, kind: str, family: str, nbytes: int, make: Callable[[], Callable[[], object]],
                extra: dict | None = None) -> list[Variant]:
    """A cold variant (rotating copies) and a warm one (first copy only)."""
    calls = [make() for _ in range(copies_for(nbytes))]
    return [Variant(name, kind, family, nbytes, calls, False, extra=extra or {}),
            Variant(name, kind, family, nbytes, calls[:1], True, extra=extra or {})]


def one_thread(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """fp32 matmul on one thread: on a shared machine torch's OpenMP barrier can make 2 threads slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return x @ w.T
    finally:
        torch.set_num_threads(n)


def ours(W: torch.Tensor, x: torch.Tensor, quick: bool) -> list[Variant]:
    out: list[Variant] = []
    ref = x @ W.T
    for name, fmt, gs, sym, in_quick in OURS:
        if quick and not in_quick:
            continue
        pw = qk.quantize_weight(W, fmt, gs, symmetric=sym)
        y, oracle = qk.qgemv(x, pw), qk.reference_matmul(x, pw, dtype=torch.float64)
        err = float((y - ref).norm() / ref.norm())
        err_act = float((y - oracle).abs().max() / oracle.abs().max())

        def make(pw: qk.PackedWeight = pw) -> Callable[[], object]:
            c = qk.PackedWeight(pw.fmt, pw.data.clone(), pw.scales.clone(),
                                None if pw.zeros is None else pw.zeros.clone(), pw.N, pw.K, pw.group_size)
            return lambda: qk.qgemv(x, c)

        out += with_copies(name, "ours", FAMILY[fmt], pw.nbytes, make,
                           {"rel_err_vs_fp32": err, "max_rel_err_vs_oracle": err_act})
    return out


def torch_peers(W: torch.Tensor, x: torch.Tensor, quick: bool) -> list[Variant]:
    N, K = W.shape
    out = with_copies("torch_fp32", "baseline", "fp32", 4 * N * K, lambda: (lambda w=W.clone(): x @ w.T))
    out += with_copies("torch_fp32_1thread", "baseline", "fp32", 4 * N * K, lambda: (lambda w=W.clone(): one_thread(x, w)))
    s8 = W.abs().amax(1) / 127
    q8 = torch.round(W / s8[:, None]).to(torch.int8)
    out += with_copies("torch_int8pack", "peer", "int8", N * K + 4 * N,
                       lambda: (lambda q=q8.clone(): torch.ops.aten._weight_int8pack_mm(x, q, s8)))
    for gs in (32,) if quick else (32, 128):
        Wg = W.view(N, K // gs, gs)
        mn, mx = Wg.amin(-1, keepdim=True), Wg.amax(-1, keepdim=True)
        sc = (mx - mn).clamp(min=1e-6) / 15
        q = torch.clamp(torch.round((Wg - mn) / sc), 0, 15).to(torch.int32).view(N, K)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.stack([sc.squeeze(-1).t(), (mn + 8 * sc).squeeze(-1).t()], -1).contiguous()  # (K/gs, N, 2)
        out += with_copies(f"torch_int4pack_g{gs}", "peer", "int4", packed.numel() * packed.element_size() + 4 * sz.numel(),
                           lambda p=packed, g=gs, z=sz: (lambda pc=p.clone(): torch.ops.aten._weight_int4pack_mm_for_cpu(x, pc, g, z)))
    return out


def ort_peers(W: torch.Tensor, x: torch.Tensor, quick: bool) -> list[Variant]:
    """ONNX Runtime MatMulNBits (com.microsoft): 4-bit, 8-bit and 2-bit, symmetric (default zero point)."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return []
    N, K = W.shape
    xn = x.numpy()
    out: list[Variant] = []
    configs = ([(4, 32, 4), (8, 128, 4), (2, 128, 4)] if quick else
               [(4, 32, 4), (4, 32, 0), (4, 128, 4), (8, 32, 4), (8, 128, 4), (2, 32, 4), (2, 128, 4)])
    for bits, bs, level in configs:
        qmax, zp = (1 << bits) - 1, 1 << (bits - 1)
        Wb = W.view(N, K // bs, bs)
        sc = (Wb.abs().amax(-1) / max(zp - 1, 1)).clamp_min(1e-8)  # (N, K/bs)
        q = (torch.round(Wb / sc[..., None]).clamp(-zp, qmax - zp) + zp).to(torch.uint8).numpy()  # (N, nb, bs)
        per = 8 // bits  # codes per byte, first code in the lowest bits
        qs = q.reshape(N, K // bs, bs // per, per)
        blob = np.zeros(qs.shape[:-1], dtype=np.uint8)
        for i in range(per):
            blob |= (qs[..., i] << (bits * i)).astype(np.uint8)
        node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft",
                                K=K, N=N, bits=bits, block_size=bs, accuracy_level=level)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, K])],
                                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, N])],
                                  [helper.make_tensor("B", TensorProto.UINT8, blob.shape, blob.tobytes(), raw=True),
                                   helper.make_tensor("scales", TensorProto.FLOAT, [N * (K // bs)],
                                                      sc.numpy().astype(np.float32).tobytes(), raw=True)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)]).SerializeToString()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()

        def make(model: bytes = model, opts: ort.SessionOptions = opts) -> Callable[[], object]:
            sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            return lambda: sess.run(None, {"A": xn})

        name = f"ort_matmulnbits_{bits}bit_b{bs}_acc{level}"
        try:
            make()()
        except Exception as e:  # noqa: BLE001  (an ORT build without this kernel: record and go on)
            out.append(Variant(name, "peer", f"int{bits}", 0, [], extra={"error": repr(e)[:200]}))
            continue
        out += with_copies(name, "peer", f"int{bits}", blob.nbytes + 4 * sc.numel(), make)
    return out


def copy_bandwidth(mb: int) -> float:
    """Read+write GB/s of a large ``Tensor.copy_``."""
    a = torch.empty(mb * 2**20 // 4)
    b = torch.empty_like(a)
    b.copy_(a)
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        b.copy_(a)
        ts.append(time.perf_counter() - t0)
    return 2 * a.numel() * 4 / statistics.median(ts) / 1e9


def run_rounds(variants: list[Variant], rounds: int, calls: int, seed: int) -> None:
    """Interleave variants: each round visits all in a fresh order, up to ``calls`` timed calls each."""
    rng = random.Random(seed)
    live = [v for v in variants if v.calls]
    for v in live:  # warm-up (and first-use compilation) outside the timed rounds
        for c in v.calls:
            c()
    for _ in range(rounds):
        rng.shuffle(live)
        for v in live:
            start = time.perf_counter()
            for i in range(calls):
                fn = v.calls[i % len(v.calls)]
                t0 = time.perf_counter()
                fn()
                v.times.append((time.perf_counter() - t0) * 1e3)
                if i >= 1 and time.perf_counter() - start > ROUND_BUDGET_S:
                    break


def summarize(variants: list[Variant], shape: tuple[int, int], copy_gbs: float) -> list[dict]:
    """One result row per variant: ms (median and spread), effective GB/s, % of copy bandwidth, speed-up."""
    fp32 = {v.warm: statistics.median(v.times) for v in variants if v.name == "torch_fp32" and v.times}
    fp32_best = {w: min(statistics.median(v.times) for v in variants if v.family == "fp32" and v.warm == w and v.times)
                 for w in fp32}
    rows = []
    for v in variants:
        row: dict = {"shape_NK": list(shape), "name": v.name, "kind": v.kind, "family": v.family,
                     "cache": "warm" if v.warm else "cold", "copies": len(v.calls), "weight_MB": v.nbytes / 1e6, **v.extra}
        if v.times:
            ms = statistics.median(v.times)
            gbs = v.nbytes / (ms * 1e-3) / 1e9
            row.update({"ms": spread(v.times), "effective_GBps": gbs, "fraction_of_copy_bandwidth": gbs / copy_gbs,
                        "speedup_vs_fp32": fp32.get(v.warm, float("nan")) / ms,
                        "speedup_vs_best_fp32": fp32_best.get(v.warm, float("nan")) / ms})
        rows.append(row)
    return rows


def headline(rows: list[dict]) -> dict:
    """The summary the issue names: cold speed-ups over fp32 at 11008x4096, ours (best config) and best peer."""
    cold = [r for r in rows if r["shape_NK"] == [11008, 4096] and r["cache"] == "cold" and "ms" in r]

    def best(kind: str, family: str, key: str = "speedup_vs_fp32") -> float | None:
        s = [r[key] for r in cold if r["kind"] == kind and r["family"] == family]
        return max(s) if s else None

    fams = ("int8", "int4", "int2", "ternary", "binary")
    out: dict = {f"{f}_speedup_11008": best("ours", f) for f in fams}
    out.update({f"best_peer_{f}_speedup_11008": best("peer", f) for f in fams})
    out.update({f"{f}_speedup_vs_best_fp32_11008": best("ours", f, "speedup_vs_best_fp32") for f in fams})
    for f in fams:
        peer_ms = [r["ms"]["median"] for r in cold if r["kind"] == "peer" and r["family"] == f]
        our_ms = [r["ms"]["median"] for r in cold if r["kind"] == "ours" and r["family"] == f]
        out[f"{f}_beats_best_peer_11008"] = (min(our_ms) < min(peer_ms)) if peer_ms and our_ms else None
    out["fp32_ms_11008"] = next((r["ms"]["median"] for r in cold if r["name"] == "torch_fp32"), None)
    out["note"] = ("cold = weights rotated through copies exceeding 2x L3; speed-ups are ratios of medians measured "
                   "interleaved in this run; peers without a kernel for a format are null")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer variants and rounds (< 1 minute)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    rounds, calls = (3, 6) if args.quick else (15, 20)
    results: list[dict] = []
    bandwidth = []
    for N, K in SHAPES:
        W, x = torch.randn(N, K), torch.randn(1, K)
        variants = ours(W, x, args.quick) + torch_peers(W, x, args.quick) + ort_peers(W, x, args.quick)
        bw = copy_bandwidth(256 if args.quick else 512)
        run_rounds(variants, rounds, calls, args.seed)
        bw = max(bw, copy_bandwidth(256 if args.quick else 512))
        bandwidth.append({"shape_NK": [N, K], "copy_GBps_read_plus_write": bw})
        results += summarize(variants, (N, K), bw)
        del variants, W
    path = write_results("quantize", "kernels", quick=args.quick, results=results, summary=headline(results),
                         packages=("onnxruntime", "onnx"),
                         extra={"backend": qk.backend(), "threads": torch.get_num_threads(), "copy_bandwidth": bandwidth,
                                "not_measured": {"torchao": "not installed"}})
    sys.stdout.write(f"wrote {path}\n")
    for r in results:
        if "ms" in r:
            sys.stdout.write(f"{r['shape_NK'][0]}x{r['shape_NK'][1]} {r['cache']:4} {r['name']:32} "
                             f"{r['ms']['median']:8.3f} ms  iqr {r['ms']['iqr']:6.3f}  {r['effective_GBps']:6.1f} GB/s  "
                             f"x{r['speedup_vs_fp32']:.2f} (x{r['speedup_vs_best_fp32']:.2f} vs best fp32)\n")
        else:
            sys.stdout.write(f"{r['shape_NK']} {r['name']} not run: {r.get('error')}\n")


if __name__ == "__main__":
    main()
