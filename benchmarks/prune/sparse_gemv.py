"""Sparse GEMV kernels (2:4 fp32 / int8, CSR at 50/70/90% fp32 / int8) against dense fp32 and torch.sparse CSR, batch 1.

    PYTHONPATH=src python benchmarks/prune/sparse_gemv.py --smoke   # seconds, tiny shape, writes nothing
    PYTHONPATH=src python benchmarks/prune/sparse_gemv.py --quick   # about a minute, prune_kernels.quick.json
    PYTHONPATH=src python benchmarks/prune/sparse_gemv.py           # full run, benchmarks/results/prune_kernels.json

The weight is a standard normal 11008 x 4096 matrix (a LLaMA-7B FFN projection) pruned 2:4 (the 2 largest of
every 4) or unstructured (a uniformly random mask at 50/70/90% sparsity: for a Gaussian matrix the same as
magnitude pruning, without sorting 45M values). "Cold": every variant rotates through enough copies of its
stored weight to stream more than twice the L3 cache measured on this machine (``nnforge.hardware.cold_copies``),
as in a real model; "warm": one copy; both timed in the same interleaved rounds, every speed-up a ratio of
medians with its bootstrap 95% interval.

Baseline and peer, as their vendors recommend: torch fp32 ``x @ W.T`` (all threads; and one thread, recorded), and
``torch.sparse`` CSR (``W.to_sparse_csr()``, ``csr @ x.T``: the CPU sparse path torch offers; its semi-structured
2:4 kernels exist only on CUDA, so 2:4 has no CPU peer).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import add_mode_args, mode, write_results  # noqa: E402
from nnforge.compress.prune import kernels as sk  # noqa: E402
from nnforge.hardware import cold_copies, interleave, ratio_with_ci, spread  # noqa: E402

SHAPE = {"full": (11008, 4096), "quick": (11008, 4096), "smoke": (256, 512)}
# (name, format, sparsity or None for 2:4, in quick mode)
OURS = [("sparse24", "2:4", None, True), ("sparse24_int8", "2:4-int8", None, True),
        ("sparse50", "csr", 0.5, False), ("sparse70", "csr", 0.7, True), ("sparse90", "csr", 0.9, True),
        ("sparse50_int8", "csr-int8", 0.5, False), ("sparse70_int8", "csr-int8", 0.7, False),
        ("sparse90_int8", "csr-int8", 0.9, True)]
PEERS = [("torch_csr50", 0.5, False), ("torch_csr70", 0.7, False), ("torch_csr90", 0.9, True)]
ROUNDS = {"full": (300, 240.0), "quick": (40, 25.0), "smoke": (4, 1.0)}  # (rounds, seconds at most)


@dataclass
class Variant:
    name: str
    kind: str  # "ours" | "peer" | "baseline"
    nbytes: int
    calls: list[Callable[[], object]]
    extra: dict[str, Any] = field(default_factory=dict)


def rotate(calls: list[Callable[[], object]]) -> Callable[[], object]:
    it = itertools.cycle(calls)
    return lambda: next(it)()


def copies(nbytes: int, smoke: bool) -> int:
    return cold_copies(nbytes, l3_bytes=nbytes) if smoke else cold_copies(nbytes)  # smoke: 3 copies, not cold


def pruned(W: torch.Tensor, sparsity: float | None, seed: int) -> torch.Tensor:
    N, K = W.shape
    if sparsity is None:  # 2:4: the 2 largest of every 4
        g = W.view(N, K // 4, 4)
        return (g * torch.zeros_like(g).scatter_(2, g.abs().topk(2, dim=-1).indices, 1.0)).view(N, K)
    keep = torch.rand(N, K, generator=torch.Generator().manual_seed(seed)) >= sparsity
    return W * keep


def one_thread(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return x @ w.T
    finally:
        torch.set_num_threads(n)


def variants(W: torch.Tensor, x: torch.Tensor, run_mode: str, seed: int) -> list[Variant]:
    smoke, out = run_mode == "smoke", []
    N, K = W.shape
    out.append(Variant("torch_fp32", "baseline", 4 * N * K, [(lambda w=W.clone(): x @ w.T)
                                                              for _ in range(copies(4 * N * K, smoke))],
                       {"config": {"op": "x @ W.T", "threads": torch.get_num_threads()}}))
    out.append(Variant("torch_fp32_1thread", "baseline", 4 * N * K, [lambda: one_thread(x, W)],
                       {"config": {"op": "x @ W.T", "threads": 1}, "note": "warm only (one copy)"}))
    masked: dict[float | None, torch.Tensor] = {}
    for name, fmt, sparsity, in_quick in OURS:
        if run_mode != "full" and not in_quick:
            continue
        Wp = masked.setdefault(sparsity, pruned(W, sparsity, seed))
        sw = sk.sparsify_weight(Wp, fmt)
        y, ref = sk.sparse_mm(x, sw), x @ Wp.T
        check = {"rel_err_vs_fp32_pruned": float((y - ref).norm() / ref.norm())}
        if run_mode != "quick":  # the float64 oracle densifies the whole matrix: seconds at full size
            oracle = sk.reference_sparse_mm(x, sw, dtype=torch.float64)
            check["max_rel_err_vs_oracle"] = float((y - oracle).abs().max() / oracle.abs().max())

        def make(sw: sk.SparseWeight = sw) -> Callable[[], object]:
            c = sk.SparseWeight(sw.fmt, *(t.clone() if t is not None else None for t in
                                          (sw.values, sw.indices, sw.row_ptr, sw.scales)), sw.N, sw.K)  # type: ignore[arg-type]
            return lambda: sk.sparse_mm(x, c)

        out.append(Variant(name, "ours", sw.nbytes, [make() for _ in range(copies(sw.nbytes, smoke))], {
            "config": {"fmt": fmt, "sparsity": sparsity if sparsity is not None else 0.5, "backend": sk.sparse_backend()},
            **check}))
    for name, sparsity, in_quick in PEERS:
        if run_mode != "full" and not in_quick:
            continue
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the peer is what torch offers
            warnings.simplefilter("ignore", UserWarning)
            csr = masked.setdefault(sparsity, pruned(W, sparsity, seed)).to_sparse_csr()
        nbytes = sum(t.numel() * t.element_size() for t in (csr.crow_indices(), csr.col_indices(), csr.values()))
        out.append(Variant(name, "peer", nbytes, [(lambda c=csr.clone(), xt=x.T.contiguous(): c @ xt) for _ in range(copies(nbytes, smoke))],
                           {"config": {"op": "W.to_sparse_csr() @ x.T", "sparsity": sparsity,
                                       "threads": torch.get_num_threads()}}))
    return out


def summarize(vs: list[Variant], samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for cache in ("cold", "warm"):
        fp32 = samples[f"torch_fp32|{cache}"]
        for v in vs:
            t = samples.get(f"{v.name}|{cache}")
            if not t:
                continue
            s, ci = ratio_with_ci(fp32, t)
            rows.append({"name": v.name, "kind": v.kind, "cache": cache, "copies": len(v.calls) if cache == "cold" else 1,
                         "weight_MB": v.nbytes / 1e6, "ms": spread(t),
                         "effective_GBps": v.nbytes / (statistics.median(t) * 1e-3) / 1e9,
                         "speedup_vs_fp32": s, "speedup_vs_fp32_ci": list(ci), **v.extra})
    return rows


def headline(rows: list[dict[str, Any]], samples: dict[str, list[float]], N: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cache, sfx in (("cold", ""), ("warm", "_warm")):
        for r in rows:
            if r["cache"] == cache and r["kind"] != "baseline":
                out[f"{r['name']}_speedup_{N}{sfx}"] = r["speedup_vs_fp32"]
                out[f"{r['name']}_speedup_{N}{sfx}_ci"] = r["speedup_vs_fp32_ci"]
        if f"sparse90|{cache}" in samples and f"torch_csr90|{cache}" in samples:  # > 1: ours faster than torch's CSR
            s, ci = ratio_with_ci(samples[f"torch_csr90|{cache}"], samples[f"sparse90|{cache}"])
            out[f"sparse90_speedup_vs_torch_csr90_{N}{sfx}"], out[f"sparse90_speedup_vs_torch_csr90_{N}{sfx}_ci"] = s, list(ci)
        out[f"fp32_ms_{N}{sfx}"] = statistics.median(samples[f"torch_fp32|{cache}"])
    out["backend"] = sk.sparse_backend()
    out["note"] = ("cold = weights rotated through copies over 2x the measured L3 (unsuffixed keys), warm = one copy "
                   "(_warm); speed-ups over torch fp32 x @ W.T are ratios of medians of interleaved samples, _ci "
                   "their bootstrap 95% interval; sparseNN = CSR fp32 at NN% sparsity, _int8 = int8 values")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mode_args(ap)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run_mode = mode(args)
    if run_mode == "smoke":  # checks the code, not the speed
        torch.set_num_threads(1)
    N, K = SHAPE[run_mode]
    torch.manual_seed(args.seed)
    W, x = torch.randn(N, K), torch.randn(1, K)
    vs = variants(W, x, run_mode, args.seed)
    fns: dict[str, Callable[[], object]] = {}
    for v in vs:
        for c in v.calls:  # first use of every copy outside the timed rounds
            c()
        if v.name != "torch_fp32_1thread":  # (one copy is cold when it is over twice the L3 on its own)
            fns[f"{v.name}|cold"] = rotate(v.calls)
        fns[f"{v.name}|warm"] = v.calls[0]
    rounds, budget = ROUNDS[run_mode]
    samples = interleave(fns, rounds=rounds, warmup=1, seed=args.seed, round_budget_s=budget)
    rows = summarize(vs, samples)
    head = headline(rows, samples, N)
    peers = {r["name"]: r.get("config") for r in rows if r["kind"] != "ours" and r["cache"] == "warm"}
    path = write_results("prune", "kernels", args=args, results=rows, summary=head, peers=peers,
                         extra={"backend": sk.sparse_backend(), "threads": torch.get_num_threads(), "shape_NK": [N, K]})
    if path:
        sys.stdout.write(f"wrote {path}\n")
    for r in rows:
        sys.stdout.write(f"{N}x{K} {r['cache']:4} {r['name']:20} {r['ms']['median']:8.3f} ms  iqr {r['ms']['iqr']:6.3f}  "
                         f"{r['effective_GBps']:6.1f} GB/s  x{r['speedup_vs_fp32']:.2f} "
                         f"[{r['speedup_vs_fp32_ci'][0]:.2f}, {r['speedup_vs_fp32_ci'][1]:.2f}]\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
