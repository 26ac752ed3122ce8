"""Benchmark: post-training quantization and QAT of the char-GPT reference model (shakespeare-char).

    python benchmarks/quantize/charlm.py           # full: 2,000 steps per training (~30 min)
    python benchmarks/quantize/charlm.py --quick   # 150 steps, fewer variants (~2 min)
    python benchmarks/quantize/charlm.py --smoke   # a 1-layer model, 4 steps, int8/int4 with RTN and GPTQ; writes nothing

1. fp32: the char-GPT trained as in the optimizer benchmark (batch 12, context 64, AdamW betas 0.9/0.99,
   weight decay 0.1, warm-up 100 + cosine to 10%, clip 1.0, the same seeds and batches) at AdamW's best
   learning rate of the 3 swept by benchmarks/optim/charlm.py (read from optim_charlm.json when it is a
   full run; otherwise all 3 are trained here and the best kept).
2. PTQ of that model: every Linear in the blocks at int8 / int4 / int3 / int2 with RTN, HQQ, GPTQ, AWQ and
   AWQ+HQQ, group 64 (and 32), asymmetric for 4 bits and fewer; the token and position embeddings and
   the LM head (tied to the token embedding) at int8 per row. GPTQ/AWQ see 32 training batches.
3. QAT from scratch: ternary (BitNet b1.58: absmean ternary weights, 8-bit activations per token) for the
   same 2,000 steps, AdamW at 3 learning rates, and binary at the best ternary learning rate; the LM
   head/embedding (tied) stays fp32.
   The QAT model is converted to packed layers before evaluation, so the loss is that of the packed model.
Val loss: mean over 200 fixed validation batches (the same as benchmarks/optim/charlm.py).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import add_mode_args, mode, pick, write_results  # noqa: E402

FP32_LRS = [2e-3, 4e-3, 8e-3]
QAT_LRS = [4e-3, 8e-3, 1.6e-2]
METHODS = ["rtn", "hqq", "gptq", "awq", "awq+hqq"]
FORMATS = ["int8", "int4", "int3", "int2"]


def batches(corpus: Any, n: int, seed: int, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [corpus.batch(split, 12, 64, gen) for _ in range(n)]


@torch.no_grad()
def val_loss(model: torch.nn.Module, val: list[Any]) -> float:
    model.eval()
    return sum(float(model(x, y)[1]) for x, y in val) / len(val)


def train(corpus: Any, lr: float, steps: int, val: list[Any], callbacks: list[Any] | None = None,
          model_options: dict[str, Any] | None = None) -> tuple[Any, float, float]:
    """Train a char-GPT from seed 0; returns (model, final val loss, training seconds)."""
    from nnforge.models import build
    from nnforge.optim import build_optimizer
    from nnforge.train import TrainConfig, fit

    torch.manual_seed(0)
    model = build("char-gpt", **(model_options or {}))
    opt = build_optimizer("adamw", model, lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
    config = TrainConfig(max_steps=steps, lr=lr, schedule="cosine", warmup_steps=min(100, steps // 10),
                         min_lr_ratio=0.1, clip_norm=1.0, log_every=10_000, seed=0)
    t0 = time.perf_counter()
    fit(model, lambda step: corpus.batch("train", 12, 64, torch.Generator().manual_seed(1_000_003 + step)),
        config=config, optimizer=opt, loss_fn=lambda m, b: m(b[0], b[1])[1], callbacks=callbacks or [])
    seconds = time.perf_counter() - t0
    return model, val_loss(model, val), seconds


def ptq(model: torch.nn.Module, fmt: str, method: str, group: int, calib: list[Any], val: list[Any]) -> dict[str, Any]:
    from nnforge.compress import WeightOnlyConfig, quantize_

    q = copy.deepcopy(model)
    blocks = [n for n, m in q.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("transformer.h.")]
    plan = {n: fmt for n in blocks} | {"lm_head": "int8"}
    cfg = WeightOnlyConfig(fmt=fmt, group_size=group, symmetric=fmt == "int8", calibrator=method,
                           embedding_fmt="int8", plan=plan, kernel=False)
    t0 = time.perf_counter()
    report = quantize_(q, cfg, calibration=calib, forward=lambda m, b: m(b[0]))
    seconds = time.perf_counter() - t0
    block_bytes = sum(c.bytes_after for c in report.changed if c.name in blocks)
    block_params = sum(q.get_submodule(n).in_features * q.get_submodule(n).out_features for n in blocks)
    return {"fmt": fmt, "method": method, "group_size": group, "val_loss": val_loss(q, val),
            "block_bits_per_weight": 8 * block_bytes / block_params, "quantize_seconds": seconds,
            "max_weight_rel_error": max(c.error for c in report.changed)}


def swept_adamw_lr() -> float | None:
    """AdamW's best lr from a full run of benchmarks/optim/charlm.py (same model, data, seeds), if any."""
    import json

    path = Path(__file__).resolve().parents[1] / "results" / "optim_charlm.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    return doc["summary"].get("adamw_best_lr") if doc.get("mode") == "full" else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    from nnforge.compress.quantize.qat import QATConfig, qat_callback
    from nnforge.data import load

    smoke = mode(args) == "smoke"
    if smoke:
        torch.set_num_threads(1)  # a 1-layer, 32-wide model: threads only wait on each other on a loaded machine
    corpus = load("shakespeare-char")
    steps, n_val, n_calib = pick(args, full=(2000, 200, 32), quick=(150, 20, 8), smoke=(4, 2, 2))
    swept = swept_adamw_lr() if mode(args) == "full" else None
    fp32_lrs = [swept] if swept else pick(args, full=FP32_LRS, quick=[4e-3], smoke=[4e-3])
    qat_lrs = pick(args, full=QAT_LRS, quick=[8e-3], smoke=[8e-3])
    model_options = pick(args, full={}, quick={}, smoke={"n_layer": 1, "n_head": 2, "n_embd": 32})
    val = batches(corpus, n_val, 12345, "val")
    calib = batches(corpus, n_calib, 777, "train")
    runs: list[dict[str, Any]] = []
    best = None
    qat_runs: list[dict[str, Any]] = []

    def run_qat(fmt: str, lr: float) -> None:
        cb = qat_callback(QATConfig(fmt=fmt, activations=8), convert=True)
        model, loss, secs = train(corpus, lr, steps, val, [cb], model_options)
        packed = sum(1 for m in model.modules() if type(m).__name__ == "QuantizedLinear")
        qat_runs.append({"kind": f"qat-{fmt}", "lr": lr, "val_loss": loss, "train_seconds": secs,
                         "packed_linear_layers": packed})
        print(f"QAT {fmt} lr {lr:g}: {loss:.4f} ({secs:.0f} s, {packed} packed layers)", flush=True)

    # interleave fp32 and ternary QAT trainings lr by lr so that machine noise spreads evenly
    for i in range(max(len(fp32_lrs), len(qat_lrs))):
        if i < len(fp32_lrs):
            model, loss, secs = train(corpus, fp32_lrs[i], steps, val, model_options=model_options)
            runs.append({"kind": "fp32", "lr": fp32_lrs[i], "val_loss": loss, "train_seconds": secs,
                         "lr_source": "optim_charlm.json (AdamW's best of 3)" if swept else "swept here"})
            print(f"fp32 lr {fp32_lrs[i]:g}: {loss:.4f} ({secs:.0f} s)", flush=True)
            if best is None or loss < best[1]:
                best = (model, loss, fp32_lrs[i])
        if i < len(qat_lrs):
            run_qat("ternary", qat_lrs[i])
    run_qat("binary", min((r for r in qat_runs if r["kind"] == "qat-ternary"), key=lambda r: r["val_loss"])["lr"])
    assert best is not None
    model, fp32_loss, fp32_lr = best
    ptq_rows = []
    groups = pick(args, full=[64, 32], quick=[64], smoke=[32])
    methods = pick(args, full=METHODS, quick=["rtn", "hqq", "gptq"], smoke=["rtn", "gptq"])
    formats = pick(args, full=FORMATS, quick=FORMATS, smoke=["int8", "int4"])
    for group in groups:
        for fmt in formats:
            for method in methods:
                if fmt == "int8" and method != "rtn" and group == 32:
                    continue
                row = ptq(model, fmt, method, group, calib, val)
                row["delta_vs_fp32"] = row["val_loss"] / fp32_loss - 1
                ptq_rows.append(row)
                print(f"{fmt} g{group} {method:8s} val {row['val_loss']:.4f} ({100 * row['delta_vs_fp32']:+.2f}%)", flush=True)

    def best_of(fmt: str, calibrated: bool) -> dict[str, Any] | None:
        rows = [r for r in ptq_rows if r["fmt"] == fmt and (r["method"] != "rtn") == calibrated
                and r["group_size"] == groups[0]]
        return min(rows, key=lambda r: r["val_loss"]) if rows else None

    def qat_best(fmt: str) -> dict[str, Any] | None:
        rows = [r for r in qat_runs if r["kind"] == f"qat-{fmt}"]
        return min(rows, key=lambda r: r["val_loss"]) if rows else None

    b4, r4, b3, r3 = best_of("int4", True), best_of("int4", False), best_of("int3", True), best_of("int3", False)
    tern, binr = qat_best("ternary"), qat_best("binary")
    summary = {
        "fp32_val_loss": fp32_loss, "fp32_lr": fp32_lr, "fp32_equal_steps_val_loss": fp32_loss,
        "best_4bit_val_loss": b4 and b4["val_loss"], "best_4bit_method": b4 and b4["method"],
        "rtn_4bit_val_loss": r4 and r4["val_loss"],
        "best_3bit_val_loss": b3 and b3["val_loss"], "best_3bit_method": b3 and b3["method"],
        "rtn_3bit_val_loss": r3 and r3["val_loss"],
        "ternary_qat_val_loss": tern and tern["val_loss"], "ternary_qat_lr": tern and tern["lr"],
        "binary_qat_val_loss": binr and binr["val_loss"], "binary_qat_lr": binr and binr["lr"],
    }
    path = write_results("quantize", "charlm", args=args, results=ptq_rows, summary=summary,
                         extra={"trainings": runs + qat_runs,
                                "setup": {"steps": steps, "val_batches": n_val, "calibration_batches": len(calib),
                                          "model": "char-gpt 4x4x128", "model_options": model_options, "batch": 12,
                                          "block": 64}})
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
