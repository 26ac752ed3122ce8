"""Benchmark: pruning the char-GPT reference model (shakespeare-char), with and without recovery training.

    python benchmarks/prune/charlm.py           # full: 2,000 training steps, 300 recovery steps (lead, quiet machine)
    python benchmarks/prune/charlm.py --quick   # 150 training steps, 30 recovery steps, fewer timings
    python benchmarks/prune/charlm.py --smoke   # a 1-layer model, 4 steps; writes nothing

1. dense: the char-GPT trained as quantize_charlm's fp32 model (AdamW lr 8e-3, betas 0.9/0.99, weight decay
   0.1, warm-up + cosine to 10%, clip 1.0, batch 12, context 64, the same seeds and batches: the training
   function of benchmarks/quantize/charlm.py).
2. 50% unstructured, layer-wise, every Linear of the blocks (the LM head is tied to the token embedding and
   left dense), no fine-tuning: magnitude, Wanda and SparseGPT (32 calibration batches of the training
   split); 2:4 with each criterion. Baseline row: ``torch.nn.utils.prune.l1_unstructured`` at 50% on the same
   layers (masks only: weight_orig + mask, the zeros multiplied as dense).
3. structured: 30% and 50% of the FFN neurons and attention heads of every block removed physically
   (``StructuredPruneConfig``, magnitude ranking), then at most 300 recovery steps (AdamW lr 1e-3, warm-up 10,
   cosine to 10%, training batches after the dense model's).
Val loss: mean over 200 fixed validation batches (as quantize_charlm). Size: the variant's safetensors file
(``safetensors.torch.save_model``). Latency: dense and pruned in the same runtime, PyTorch eager fp32 (the
fastest nnforge offers for this model today), at batch 1 x 64 and batch 12 x 64 (full block), interleaved
rounds, ratio pruned/dense of medians with its bootstrap 95% interval. The best 50% unstructured and the best
2:4 model are also timed with their zeros stored sparse (``SparsifyConfig``: each layer runs its sparse kernel
only at the row counts where its own interleaved timing said faster), beside their file size.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import add_mode_args, load_script, mode, pick, ratio_with_ci, spread, write_results  # noqa: E402

DENSE_LR = 8e-3
RECOVERY_LR = 1e-3


def _quantize_charlm() -> Any:
    """benchmarks/quantize/charlm.py as a module: its training function and batches are the reference's."""
    return load_script("quantize", "charlm")


def block_linears(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("transformer.h.")]


def in_blocks(name: str, module: torch.nn.Module) -> bool:
    return name.startswith("transformer.h.")


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def file_mb(model: torch.nn.Module) -> float:
    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_model(model, str(path))
        return path.stat().st_size / 1e6


def unstructured(q: Any, dense: torch.nn.Module, kind: str, criterion: str, calib: list[Any],
                 val: list[Any]) -> dict[str, Any]:
    from nnforge.compress import NMConfig, UnstructuredConfig, prune_

    model = copy.deepcopy(dense)
    config = UnstructuredConfig(sparsity=0.5, criterion=criterion) if kind == "unstructured50" \
        else NMConfig(n=2, m=4, criterion=criterion)
    t0 = time.perf_counter()
    report = prune_(model, config, in_blocks, calibration=calib, forward=lambda m, b: m(b[0]))
    seconds = time.perf_counter() - t0
    zeros = sum(int((model.get_submodule(n).weight == 0).sum()) for n in block_linears(model))
    total = sum(model.get_submodule(n).weight.numel() for n in block_linears(model))
    return {"variant": kind, "criterion": criterion, "val_loss": q.val_loss(model, val), "prune_seconds": seconds,
            "block_sparsity": zeros / total, "modules_pruned": len(report.changed), "params": params(model),
            "file_mb": file_mb(model), "_model": model}


def sparse_runtime(q: Any, dense: torch.nn.Module, row: dict[str, Any], val: list[Any], rounds: int,
                   repeats: int) -> dict[str, Any]:
    """The pruned model with its zeros stored sparse (SparsifyConfig: 2:4 or CSR per layer, each layer run sparse
    only at the row counts where its own timing says faster), timed against dense as the structured rows are."""
    from nnforge.compress import prune_
    from nnforge.compress.prune.sparse.config import SparsifyConfig

    block = dense.config.block_size
    model = copy.deepcopy(row["_model"])
    report = prune_(model, SparsifyConfig(batch_sizes=(block, 12 * block), repeats=repeats), in_blocks)
    sparse_layers = sum(1 for m in model.modules() if callable(getattr(m, "runs_sparse", None)))
    runs_sparse = {b: sum(1 for m in model.modules() if callable(getattr(m, "runs_sparse", None)) and m.runs_sparse(b))
                   for b in (block, 12 * block)}
    return {"variant": f"{row['variant']} {row['criterion']} sparse", "val_loss": q.val_loss(model, val),
            "file_mb": file_mb(model), "sparse_layers": sparse_layers, "layers_run_sparse_by_rows": runs_sparse,
            "layer_verdicts": {c.name: c.detail for c in report.changed},
            "latency_b1": latency(dense, model, 1, block, rounds), "latency_b12": latency(dense, model, 12, block, rounds)}


def torch_masks(q: Any, dense: torch.nn.Module, val: list[Any]) -> dict[str, Any]:
    """The baseline: torch.nn.utils.prune.l1_unstructured masks at 50% on the same layers."""
    from torch.nn.utils import prune as torch_prune

    model = copy.deepcopy(dense)
    for name in block_linears(model):
        torch_prune.l1_unstructured(model.get_submodule(name), "weight", amount=0.5)
    return {"variant": "unstructured50", "criterion": "torch.nn.utils.prune.l1_unstructured (masks only)",
            "val_loss": q.val_loss(model, val), "params": params(model), "file_mb": file_mb(model)}


def recover(model: torch.nn.Module, corpus: Any, steps: int, offset: int) -> float:
    """Recovery training of a pruned model; returns its seconds."""
    from nnforge.optim import build_optimizer
    from nnforge.train import TrainConfig, fit

    if steps <= 0:
        return 0.0
    opt = build_optimizer("adamw", model, lr=RECOVERY_LR, betas=(0.9, 0.99), weight_decay=0.1)
    config = TrainConfig(max_steps=steps, lr=RECOVERY_LR, schedule="cosine", warmup_steps=min(10, steps // 10),
                         min_lr_ratio=0.1, clip_norm=1.0, log_every=10_000, seed=0)
    t0 = time.perf_counter()
    fit(model, lambda step: corpus.batch("train", 12, 64, torch.Generator().manual_seed(1_000_003 + offset + step)),
        config=config, optimizer=opt, loss_fn=lambda m, b: m(b[0], b[1])[1])
    return time.perf_counter() - t0


def latency(dense: torch.nn.Module, pruned: torch.nn.Module, batch: int, block: int, rounds: int) -> dict[str, Any]:
    from nnforge.hardware import interleave

    x = torch.randint(0, dense.config.vocab_size, (batch, block), generator=torch.Generator().manual_seed(5))
    dense.eval(), pruned.eval()
    t = interleave({"dense": lambda: dense(x), "pruned": lambda: pruned(x)}, rounds=rounds, warmup=3,
                   calls_per_round=1 if batch > 1 else 5)
    ratio, ci = ratio_with_ci(t["pruned"], t["dense"])
    return {"batch": batch, "block": block, "dense": spread(t["dense"]), "pruned": spread(t["pruned"]),
            "latency_ratio": ratio, "latency_ratio_ci": list(ci)}


def structured(q: Any, dense: torch.nn.Module, fraction: float, corpus: Any, calib: list[Any], val: list[Any],
               recovery_steps: int, offset: int, rounds: int) -> dict[str, Any]:
    from nnforge.compress import prune_
    from nnforge.compress.prune.structured import StructuredPruneConfig

    model = copy.deepcopy(dense)
    report = prune_(model, StructuredPruneConfig(heads=fraction, ffn=fraction, channels=0.0),
                    calibration=calib, forward=lambda m, b: m(b[0]))
    loss_pruned = q.val_loss(model, val)
    secs = recover(model, corpus, recovery_steps, offset)
    row = {"variant": f"structured{round(100 * fraction)}", "heads_removed": fraction, "ffn_removed": fraction,
           "val_loss_before_recovery": loss_pruned, "recovery_steps": recovery_steps, "recovery_seconds": secs,
           "val_loss": q.val_loss(model, val), "params": params(model), "file_mb": file_mb(model),
           "kept_shapes": report.config.get("data", {}).get("shapes", {})}
    row["latency_b1"] = latency(dense, model, 1, dense.config.block_size, rounds)
    row["latency_b12"] = latency(dense, model, 12, dense.config.block_size, rounds)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    from nnforge.data import load

    if mode(args) == "smoke":
        torch.set_num_threads(1)  # a 1-layer, 32-wide model: threads only wait on each other on a loaded machine
    q = _quantize_charlm()
    corpus = load("shakespeare-char")
    steps, n_val, n_calib = pick(args, full=(2000, 200, 32), quick=(150, 20, 8), smoke=(4, 2, 2))
    recovery_steps = pick(args, full=300, quick=30, smoke=2)
    rounds = pick(args, full=40, quick=10, smoke=3)
    model_options = pick(args, full={}, quick={}, smoke={"n_layer": 1, "n_head": 2, "n_embd": 32})
    criteria = pick(args, full=["magnitude", "wanda", "sparsegpt"], quick=["magnitude", "wanda", "sparsegpt"],
                    smoke=["magnitude", "wanda"])
    val = q.batches(corpus, n_val, 12345, "val")
    calib = q.batches(corpus, n_calib, 777, "train")
    dense, dense_loss, dense_secs = q.train(corpus, DENSE_LR, steps, val, model_options=model_options)
    print(f"dense lr {DENSE_LR:g}: val {dense_loss:.4f} ({dense_secs:.0f} s)", flush=True)
    dense_row = {"variant": "dense", "val_loss": dense_loss, "train_seconds": dense_secs, "params": params(dense),
                 "file_mb": file_mb(dense)}
    rows: list[dict[str, Any]] = [dense_row]
    for kind in ("unstructured50", "2:4"):
        for criterion in criteria:
            rows.append(unstructured(q, dense, kind, criterion, calib, val))
            print(f"{kind} {criterion}: val {rows[-1]['val_loss']:.4f}", flush=True)
    peer = torch_masks(q, dense, val)
    print(f"torch l1_unstructured masks 50%: val {peer['val_loss']:.4f}", flush=True)
    for fraction in (0.3, 0.5):
        rows.append(structured(q, dense, fraction, corpus, calib, val, recovery_steps, steps, rounds))
        r = rows[-1]
        print(f"structured {fraction:.0%}: val {r['val_loss_before_recovery']:.4f} -> {r['val_loss']:.4f} after "
              f"{recovery_steps} steps; latency b12 x{r['latency_b12']['latency_ratio']:.2f}, "
              f"b1 x{r['latency_b1']['latency_ratio']:.2f}; file {r['file_mb']:.2f} MB", flush=True)
    u50 = [r for r in rows if r["variant"] == "unstructured50"]
    best = min((r for r in u50 if r["criterion"] != "magnitude"), key=lambda r: r["val_loss"])
    best24 = min((r for r in rows if r["variant"] == "2:4"), key=lambda r: r["val_loss"])
    sparse = {key: sparse_runtime(q, dense, r, val, rounds, pick(args, full=20, quick=5, smoke=4))
              for key, r in (("unstructured50", best), ("sparse24", best24))}
    for r in rows:
        r.pop("_model", None)
    for r in sparse.values():
        rows.append(r)
        print(f"{r['variant']}: latency b12 x{r['latency_b12']['latency_ratio']:.2f}, b1 x{r['latency_b1']['latency_ratio']:.2f};"
              f" file {r['file_mb']:.2f} MB; layers run sparse by rows {r['layers_run_sparse_by_rows']}", flush=True)
    s50 = next(r for r in rows if r["variant"] == "structured50")
    summary = {
        "dense_val_loss": dense_loss,
        "unstructured50_best_val_loss": best["val_loss"], "unstructured50_best_criterion": best["criterion"],
        "unstructured50_magnitude_val_loss": next(r["val_loss"] for r in u50 if r["criterion"] == "magnitude"),
        "unstructured50_torch_masks_val_loss": peer["val_loss"],
        "sparse24_best_val_loss": min(r["val_loss"] for r in rows if r["variant"] == "2:4"),
        "structured50_val_loss": s50["val_loss"],
        "structured50_latency_ratio": s50["latency_b12"]["latency_ratio"],
        "structured50_latency_ratio_ci": s50["latency_b12"]["latency_ratio_ci"],
        "structured50_latency_ratio_b1": s50["latency_b1"]["latency_ratio"],
        "structured50_latency_ratio_b1_ci": s50["latency_b1"]["latency_ratio_ci"],
        "structured50_size_ratio": s50["file_mb"] / dense_row["file_mb"],
        "structured50_params_ratio": s50["params"] / dense_row["params"],
    }
    for key, r in sparse.items():  # the unstructured / 2:4 models in nnforge's sparse runtime, against dense
        summary[f"{key}_sparse_latency_ratio"] = r["latency_b12"]["latency_ratio"]
        summary[f"{key}_sparse_latency_ratio_ci"] = r["latency_b12"]["latency_ratio_ci"]
        summary[f"{key}_sparse_latency_ratio_b1"] = r["latency_b1"]["latency_ratio"]
        summary[f"{key}_sparse_latency_ratio_b1_ci"] = r["latency_b1"]["latency_ratio_ci"]
        summary[f"{key}_sparse_size_ratio"] = r["file_mb"] / dense_row["file_mb"]
    exact = "a ratio of file sizes / parameter counts: exact, not a measurement with noise"
    path = write_results(
        "prune", "charlm", args=args, results=rows, summary=summary,
        peers={"torch.nn.utils.prune.l1_unstructured": {**peer, "configuration": "amount=0.5 on every Linear of the "
                                                        "blocks, masks kept (weight_orig + weight_mask)"}},
        no_ci={"structured50_size_ratio": exact, "structured50_params_ratio": exact,
               "unstructured50_sparse_size_ratio": exact, "sparse24_sparse_size_ratio": exact},
        extra={"setup": {"steps": steps, "val_batches": n_val, "calibration_batches": n_calib,
                         "recovery_steps": recovery_steps, "recovery_lr": RECOVERY_LR, "dense_lr": DENSE_LR,
                         "latency_rounds": rounds, "runtime": "PyTorch eager fp32", "threads": torch.get_num_threads(),
                         "model": "char-gpt", "model_options": model_options, "batch": 12, "block": 64}})
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
