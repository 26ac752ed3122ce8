"""Low-bit GEMV kernels against fp32 and peer int8/int4/int2 kernels, batch 1, weights cold and warm.

    PYTHONPATH=src python benchmarks/quantize/gemv.py --smoke   # seconds, tiny shape, writes nothing
    PYTHONPATH=src python benchmarks/quantize/gemv.py --quick   # a few minutes, quantize_kernels.quick.json
    PYTHONPATH=src python benchmarks/quantize/gemv.py           # full run, benchmarks/results/quantize_kernels.json

"Cold": every variant rotates through enough copies of its weights to stream more than twice the L3 cache
measured on this machine (``nnforge.hardware.cold_copies``), as in a real model where each layer's weights
come from DRAM; "warm": one copy. Both are timed in the same interleaved rounds (every variant, cold and
warm, once per round in a fresh order) and every speed-up carries a bootstrap 95% interval over those samples.

Peers, each configured as its vendor recommends: torch fp32 (``matmul``, all threads and one thread),
``aten._weight_int8pack_mm`` (per-row int8), ``aten._weight_int4pack_mm_for_cpu`` (group 32 and 128);
ONNX Runtime ``MatMulNBits`` at 2, 4 and 8 bits, block 32 and 128, quantized by ORT's ``MatMulNBitsQuantizer`` with
its defaults (asymmetric) and ``accuracy_level`` 4 (int8 activations,
the level ORT recommends for CPU), one InferenceSession per model (per weight copy), intra-op threads = torch's,
thread spinning off; torchao's CPU weight-only configurations (``Int8WeightOnlyConfig`` per row,
``PrototypeInt4WeightOnlyConfig`` group 32/128, whose CPU kernel is ``_weight_int4pack_mm_for_cpu``) where
torchao imports. Each peer's configuration is recorded in the results' ``peers``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import add_mode_args, mode, write_results  # noqa: E402
from nnforge.compress.quantize import kernels as qk  # noqa: E402
from nnforge.hardware import cold_copies, interleave, ratio_with_ci, spread  # noqa: E402

SHAPES = {"full": [(4096, 4096), (11008, 4096)], "quick": [(4096, 4096), (11008, 4096)], "smoke": [(256, 512)]}
FAMILIES = ("int8", "int4", "int2", "ternary", "binary")
# (name, fmt, group_size, symmetric, in quick mode); smoke runs the quick ones
OURS = [("int8_row", "int8", None, True, True), ("int4_g128", "int4", 128, True, True),
        ("int4_g32", "int4", 32, True, False), ("int2_g128_asym", "int2", 128, False, False),
        ("int2_g256_asym", "int2", 256, False, True),
        ("ternary_row", "ternary", None, True, True), ("binary_row", "binary", None, True, True),
        ("int8_g128", "int8", 128, True, False), ("int4_g128_asym", "int4", 128, False, False),
        ("int2_g64_asym", "int2", 64, False, False), ("ternary_g128", "ternary", 128, True, False),
        ("binary_g128", "binary", 128, True, False)]
# ONNX Runtime MatMulNBits (bits, block): accuracy_level 4 for every one, as ORT recommends on CPU
ORT_CONFIGS = {"full": [(b, bs) for b in (4, 2, 8) for bs in (32, 128)],
               "quick": [(4, 32), (4, 128), (2, 128), (8, 128)], "smoke": [(4, 32), (2, 128)]}
ORT_ACCURACY_LEVEL = 4
ROUNDS = {"full": (400, 120.0), "quick": (40, 20.0), "smoke": (4, 1.0)}  # (rounds, seconds per shape at most)


@dataclass
class Variant:
    """One thing timed: ``calls`` (one per weight copy), its weight bytes and what it is."""

    name: str
    kind: str  # "ours" | "peer" | "baseline"
    family: str  # int8, int4, ... or fp32
    nbytes: int
    calls: list[Callable[[], object]]
    extra: dict[str, Any] = field(default_factory=dict)


def rotate(calls: list[Callable[[], object]]) -> Callable[[], object]:
    """One call per invocation, cycling through the weight copies (so each comes from DRAM)."""
    it = itertools.cycle(calls)
    return lambda: next(it)()


class Copies:
    """Builds a variant's weight copies: enough for cold timings (from the measured L3), or few in smoke mode."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke

    def count(self, nbytes: int) -> int:
        # smoke mode only checks that the code runs: three copies, not a cache-busting set
        return cold_copies(nbytes, l3_bytes=nbytes) if self.smoke else cold_copies(nbytes)

    def variant(self, name: str, kind: str, family: str, nbytes: int, make: Callable[[], Callable[[], object]],
                extra: dict[str, Any] | None = None) -> Variant:
        return Variant(name, kind, family, nbytes, [make() for _ in range(self.count(nbytes))], extra or {})


def ours(W: torch.Tensor, x: torch.Tensor, mode: str, copies: Copies, only: set[str] | None) -> list[Variant]:
    out: list[Variant] = []
    ref = x @ W.T
    for name, fmt, gs, sym, in_quick in OURS:
        if (mode != "full" and not in_quick) or (only and fmt not in only):
            continue
        pw = qk.quantize_weight(W, fmt, gs, symmetric=sym)
        y, oracle = qk.qgemv(x, pw), qk.reference_matmul(x, pw, dtype=torch.float64)

        def make(pw: qk.PackedWeight = pw) -> Callable[[], object]:
            c = qk.PackedWeight(pw.fmt, pw.data.clone(), pw.scales.clone(),
                                None if pw.zeros is None else pw.zeros.clone(), pw.N, pw.K, pw.group_size)
            return lambda: qk.qgemv(x, c)

        out.append(copies.variant(name, "ours", fmt, pw.nbytes, make, {
            "config": {"fmt": fmt, "group_size": gs, "symmetric": sym, "backend": qk.backend()},
            "rel_err_vs_fp32": float((y - ref).norm() / ref.norm()),
            "max_rel_err_vs_oracle": float((y - oracle).abs().max() / oracle.abs().max())}))
    return out


def one_thread(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """fp32 matmul on one thread: on a shared machine torch's OpenMP barrier can make 2 threads slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return x @ w.T
    finally:
        torch.set_num_threads(n)


def torch_peers(W: torch.Tensor, x: torch.Tensor, mode: str, copies: Copies, only: set[str] | None) -> list[Variant]:
    N, K = W.shape
    out = [copies.variant("torch_fp32", "baseline", "fp32", 4 * N * K, lambda: (lambda w=W.clone(): x @ w.T),
                          {"config": {"op": "x @ W.T", "threads": torch.get_num_threads()}}),
           copies.variant("torch_fp32_1thread", "baseline", "fp32", 4 * N * K,
                          lambda: (lambda w=W.clone(): one_thread(x, w)), {"config": {"op": "x @ W.T", "threads": 1}})]
    if not only or "int8" in only:
        s8 = W.abs().amax(1) / 127
        q8 = torch.round(W / s8[:, None]).to(torch.int8)
        out.append(copies.variant("torch_int8pack", "peer", "int8", N * K + 4 * N,
                                  lambda: (lambda q=q8.clone(): torch.ops.aten._weight_int8pack_mm(x, q, s8)),
                                  {"config": {"op": "aten._weight_int8pack_mm", "scales": "per row"}}))
    for gs in ((32,) if mode != "full" else (32, 128)) if not only or "int4" in only else ():
        Wg = W.view(N, K // gs, gs)
        mn, mx = Wg.amin(-1, keepdim=True), Wg.amax(-1, keepdim=True)
        sc = (mx - mn).clamp(min=1e-6) / 15
        q = torch.clamp(torch.round((Wg - mn) / sc), 0, 15).to(torch.int32).view(N, K)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.stack([sc.squeeze(-1).t(), (mn + 8 * sc).squeeze(-1).t()], -1).contiguous()  # (K/gs, N, 2)
        out.append(copies.variant(
            f"torch_int4pack_g{gs}", "peer", "int4", packed.numel() * packed.element_size() + 4 * sz.numel(),
            lambda p=packed, g=gs, z=sz: (lambda pc=p.clone(): torch.ops.aten._weight_int4pack_mm_for_cpu(x, pc, g, z)),
            {"config": {"op": "aten._weight_int4pack_mm_for_cpu", "group_size": gs, "zero_point": "asymmetric"}}))
    return out


def torchao_peers(W: torch.Tensor, x: torch.Tensor, mode: str, copies: Copies,
                  only: set[str] | None) -> tuple[list[Variant], str | None]:
    """torchao's CPU weight-only configurations (eager: the GEMV is one aten kernel call either way)."""
    try:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except Exception as e:  # noqa: BLE001  (a torchao build that does not import here: say why)
        return [], f"torchao does not import: {e!r}"[:300]
    N, K = W.shape
    cfgs: list[tuple[str, str, Any, int]] = [("torchao_int8_weight_only", "int8", Int8WeightOnlyConfig(set_inductor_config=False),
                                              N * K + 4 * N)]
    for gs in (32,) if mode != "full" else (32, 128):
        cfgs.append((f"torchao_int4_weight_only_g{gs}", "int4",
                     PrototypeInt4WeightOnlyConfig(group_size=gs, set_inductor_config=False), N * K // 2 + 8 * N * K // gs))
    out: list[Variant] = []
    for name, family, cfg, nbytes in cfgs:
        if only and family not in only:
            continue

        def make(cfg: Any = cfg) -> Callable[[], object]:
            lin = torch.nn.Linear(K, N, bias=False)
            with torch.no_grad():
                lin.weight.copy_(W)
            quantize_(lin, cfg)
            return lambda: lin(x)

        try:
            out.append(copies.variant(name, "peer", family, nbytes, make,
                                      {"config": {"torchao": type(cfg).__name__, **{k: str(v) for k, v in vars(cfg).items()}}}))
        except Exception as e:  # noqa: BLE001
            return out, f"{name}: {e!r}"[:300]
    return out, None


def ort_session(model: bytes, threads: int) -> Any:
    """One InferenceSession: intra-op threads as torch, spinning off (idle threads must not steal the CPU)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def matmulnbits_model(W: torch.Tensor, bits: int, bs: int) -> tuple[bytes, int]:
    """``x @ W.T`` as one MatMulNBits node, quantized by ORT's own ``MatMulNBitsQuantizer`` (its defaults:
    asymmetric, zero points; ``accuracy_level`` 4), and the bytes of its initializers (codes, scales, zeros)."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    N, K = W.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "W"], ["Y"])], "g",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, N])],
                              [numpy_helper.from_array(W.T.contiguous().numpy(), "W")])
    q = MatMulNBitsQuantizer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]),
                             algo_config=DefaultWeightOnlyQuantConfig(block_size=bs, bits=bits, is_symmetric=False,
                                                                      accuracy_level=ORT_ACCURACY_LEVEL))
    q.process()
    model = q.model.model
    if [n.op_type for n in model.graph.node] != ["MatMulNBits"]:
        raise RuntimeError(f"MatMulNBitsQuantizer gave {[n.op_type for n in model.graph.node]}, not one MatMulNBits")
    return model.SerializeToString(), sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)


def ort_peers(W: torch.Tensor, x: torch.Tensor, mode: str, copies: Copies,
              only: set[str] | None) -> tuple[list[Variant], dict[str, str]]:
    """ONNX Runtime MatMulNBits (com.microsoft), one session per weight copy; configs this build lacks are recorded."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return [], {"onnxruntime": f"not installed: {e}"}
    xn, ref = x.numpy(), x @ W.T
    out: list[Variant] = []
    missing: dict[str, str] = {}
    for bits, bs in ORT_CONFIGS[mode]:
        family = f"int{bits}"
        if only and family not in only:
            continue
        name = f"ort_matmulnbits_{bits}bit_b{bs}_acc{ORT_ACCURACY_LEVEL}"
        model, nbytes = matmulnbits_model(W, bits, bs)
        try:
            first = ort_session(model, torch.get_num_threads())
            y = torch.from_numpy(first.run(None, {"A": xn})[0])
        except Exception as e:  # noqa: BLE001  (an ORT build without this kernel: record and go on)
            missing[name] = repr(e)[:200]
            continue
        sessions = iter([first])

        def make(model: bytes = model, sessions: Any = sessions) -> Callable[[], object]:
            sess = next(sessions, None) or ort_session(model, torch.get_num_threads())
            return lambda: sess.run(None, {"A": xn})

        out.append(copies.variant(name, "peer", family, nbytes, make, {
            "config": {"op": "com.microsoft.MatMulNBits", "bits": bits, "block_size": bs, "symmetric": False,
                       "quantizer": "onnxruntime MatMulNBitsQuantizer (DefaultWeightOnlyQuantConfig)",
                       "accuracy_level": ORT_ACCURACY_LEVEL, "intra_op_num_threads": torch.get_num_threads(),
                       "allow_spinning": 0, "sessions": "one per weight copy"},
            "rel_err_vs_fp32": float((y - ref).norm() / ref.norm())}))
    return out, missing


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


def measure(variants: list[Variant], mode: str, seed: int) -> dict[tuple[str, str], list[float]]:
    """Interleaved rounds over every variant cold (rotating copies) and warm (first copy): ms samples."""
    live = [v for v in variants if v.calls]
    for v in live:  # first use of every copy (allocation, ORT's first run) outside the timed rounds
        for c in v.calls:
            c()
    fns: dict[str, Callable[[], object]] = {}
    for v in live:
        fns[f"{v.name}|cold"] = rotate(v.calls)
        fns[f"{v.name}|warm"] = v.calls[0]
    rounds, budget = ROUNDS[mode]
    samples = interleave(fns, rounds=rounds, warmup=1, seed=seed, round_budget_s=budget)
    return {tuple(k.split("|")): s for k, s in samples.items()}  # type: ignore[misc]


def summarize(variants: list[Variant], samples: dict[tuple[str, str], list[float]], shape: tuple[int, int],
              copy_gbs: float) -> list[dict[str, Any]]:
    """One row per variant and cache state: ms spread, GB/s, % of copy bandwidth, speed-ups with 95% intervals."""
    rows = []
    for cache in ("cold", "warm"):
        fp32 = samples[("torch_fp32", cache)]
        fp32_best = min((samples[(v.name, cache)] for v in variants if v.family == "fp32"), key=statistics.median)
        for v in variants:
            row: dict[str, Any] = {"shape_NK": list(shape), "name": v.name, "kind": v.kind, "family": v.family,
                                   "cache": cache, "copies": len(v.calls) if cache == "cold" else 1,
                                   "weight_MB": v.nbytes / 1e6, **v.extra}
            t = samples.get((v.name, cache))
            if t:
                gbs = v.nbytes / (statistics.median(t) * 1e-3) / 1e9
                s, ci = ratio_with_ci(fp32, t)
                sb, cib = ratio_with_ci(fp32_best, t)
                row.update({"ms": spread(t), "effective_GBps": gbs, "fraction_of_copy_bandwidth": gbs / copy_gbs,
                            "speedup_vs_fp32": s, "speedup_vs_fp32_ci": list(ci),
                            "speedup_vs_best_fp32": sb, "speedup_vs_best_fp32_ci": list(cib)})
            rows.append(row)
    return rows


def headline(rows: list[dict[str, Any]], samples: dict[tuple[str, str], list[float]], shape: tuple[int, int]) -> dict[str, Any]:
    """Speed-ups over fp32 at the headline shape, ours (best config) and best peer, cold (unsuffixed) and warm."""
    out: dict[str, Any] = {}
    tag = f"_{shape[0]}"
    for cache, sfx in (("cold", ""), ("warm", "_warm")):
        cells = [r for r in rows if r["shape_NK"] == list(shape) and r["cache"] == cache and "ms" in r]
        for f in FAMILIES:
            mine = min((r for r in cells if r["kind"] == "ours" and r["family"] == f), key=lambda r: r["ms"]["median"], default=None)
            peer = min((r for r in cells if r["kind"] == "peer" and r["family"] == f), key=lambda r: r["ms"]["median"], default=None)
            for key, r, field_ in ((f"{f}_speedup", mine, "speedup_vs_fp32"), (f"best_peer_{f}_speedup", peer, "speedup_vs_fp32"),
                                   (f"{f}_speedup_vs_best_fp32", mine, "speedup_vs_best_fp32")):
                out[f"{key}{tag}{sfx}"] = r[field_] if r else None
                out[f"{key}{tag}{sfx}_ci"] = r[f"{field_}_ci"] if r else None
            out[f"best_peer_{f}{tag}{sfx}"] = peer["name"] if peer else None
            if mine and peer:  # > 1: ours is faster than the fastest peer of its format
                s, ci = ratio_with_ci(samples[(peer["name"], cache)], samples[(mine["name"], cache)])
                out[f"{f}_speedup_vs_best_peer{tag}{sfx}"], out[f"{f}_speedup_vs_best_peer{tag}{sfx}_ci"] = s, list(ci)
                out[f"{f}_beats_best_peer{tag}{sfx}"] = s > 1
            else:
                out[f"{f}_speedup_vs_best_peer{tag}{sfx}"] = out[f"{f}_speedup_vs_best_peer{tag}{sfx}_ci"] = None
                out[f"{f}_beats_best_peer{tag}{sfx}"] = None
        out[f"fp32_ms{tag}{sfx}"] = next((r["ms"]["median"] for r in cells if r["name"] == "torch_fp32"), None)
    out["backend"] = qk.backend()
    out["note"] = ("cold = weights rotated through copies over 2x the measured L3 (unsuffixed keys), warm = one copy "
                   "(_warm); speed-ups are ratios of medians of interleaved samples, _ci their bootstrap 95% interval; "
                   "*_beats_best_peer compares medians with the fastest peer of the format; null: no peer has the format")
    return out


def run_shape(N: int, K: int, args: argparse.Namespace, mode: str, only: set[str] | None,
              notes: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[tuple[str, str], list[float]], dict[str, Any]]:
    torch.manual_seed(args.seed)
    W, x = torch.randn(N, K), torch.randn(1, K)
    copies = Copies(mode == "smoke")
    ao, ao_missing = torchao_peers(W, x, mode, copies, only)
    ort, ort_missing = ort_peers(W, x, mode, copies, only)
    variants = ours(W, x, mode, copies, only) + torch_peers(W, x, mode, copies, only) + ao + ort
    notes.setdefault("not_measured", {}).update({**({"torchao": ao_missing} if ao_missing else {}), **ort_missing})
    mb = {"smoke": 16, "quick": 256, "full": 512}[mode]
    bw = copy_bandwidth(mb)
    samples = measure(variants, mode, args.seed)
    bw = max(bw, copy_bandwidth(mb))
    rows = summarize(variants, samples, (N, K), bw)
    return rows, samples, {"shape_NK": [N, K], "copy_GBps_read_plus_write": bw,
                           "copies": {v.name: len(v.calls) for v in variants}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mode_args(ap, only=f"formats, comma-separated: {','.join(FAMILIES)} (fp32 always runs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run_mode = mode(args)
    if run_mode == "smoke":  # checks the code, not the speed: one thread, so a loaded machine cannot stall barriers
        torch.set_num_threads(1)
    only = set(args.only) if args.only else None
    if only and only - set(FAMILIES):
        ap.error(f"--only: unknown format(s) {', '.join(sorted(only - set(FAMILIES)))}; known: {', '.join(FAMILIES)}")
    results: list[dict[str, Any]] = []
    notes: dict[str, Any] = {"bandwidth": []}
    head: dict[str, Any] = {}
    for N, K in SHAPES[run_mode]:
        rows, samples, bw = run_shape(N, K, args, run_mode, only, notes)
        results += rows
        notes["bandwidth"].append(bw)
        head = headline(results, samples, (N, K))  # the last shape is the headline one
    peers = {r["name"]: r.get("config") for r in results if r["kind"] != "ours" and r["cache"] == "cold"}
    peers.update({k: f"not measured: {v}" for k, v in notes["not_measured"].items()})
    path = write_results("quantize", "kernels", args=args, results=results, summary=head, peers=peers,
                         packages=("onnxruntime", "onnx", "torchao"),
                         extra={"backend": qk.backend(), "threads": torch.get_num_threads(),
                                "copy_bandwidth": notes["bandwidth"]})
    if path:
        sys.stdout.write(f"wrote {path}\n")
    for r in results:
        if "ms" in r:
            sys.stdout.write(f"{r['shape_NK'][0]}x{r['shape_NK'][1]} {r['cache']:4} {r['name']:34} "
                             f"{r['ms']['median']:8.3f} ms  iqr {r['ms']['iqr']:6.3f}  {r['effective_GBps']:6.1f} GB/s  "
                             f"x{r['speedup_vs_fp32']:.2f} [{r['speedup_vs_fp32_ci'][0]:.2f}, {r['speedup_vs_fp32_ci'][1]:.2f}]\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
