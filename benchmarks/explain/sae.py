"""Benchmark: sparse autoencoders on the char-GPT's residual stream (shakespeare-char).

    python benchmarks/explain/sae.py           # full: the model's 2,000 training steps, 2 SAEs (about 7 min)
    python benchmarks/explain/sae.py --quick   # a 150-step model, short SAE training (about a minute)
    python benchmarks/explain/sae.py --smoke   # a 2-layer, 32-wide model, 4 steps; writes nothing

1. The model: the char-GPT (4 blocks, 128 wide) trained by benchmarks/quantize/charlm.py's ``train`` (its fp32
   recipe, as benchmarks/prune/charlm.py uses it: AdamW lr 8e-3, betas 0.9/0.99, weight decay 0.1, warm-up 100 +
   cosine to 10%, clip 1.0, batch 12, context 64, seed 0, 2,000 steps).
2. Activations: the residual stream after blocks 2 and 4 (``residual.2``, ``residual.4``; after blocks n/2 and n
   of a smaller model) at every position of 64-character windows of the training split, drawn with their own
   seed (not the model's training batches).
3. One SAE per layer: TopK (Gao et al. 2024), 8 x 128 = 1,024 latents, k = 32 (so at most 32 active latents per
   token: L0 <= 32 by construction), encoder initialised as the decoder's transpose, AuxK loss (the 64 largest
   dead latents reconstruct the residual error, weight 1/32; dead = silent for 200,000 training tokens),
   decoder rows at unit norm, inputs scaled to a mean squared norm of 128; Adam lr 1e-3, batch 4,096 tokens,
   800 steps (3.3M tokens: about 2 passes over 1.5M collected positions), warm-up 50 + cosine to 10%.
4. Evaluation on the 200 fixed validation batches of quantize_charlm (12 x 64 tokens each, seed 12345): val loss
   of the model, and with the SAE's reconstruction spliced in place of the layer's activations (a forward hook);
   FVU = sum |x - x_hat|^2 / sum |x - mean|^2 and relative MSE = sum |x - x_hat|^2 / sum |x|^2; L0; a latent is
   alive if it fires on at least one of the first 10,000 validation tokens. The 8 latents carrying the most
   activation are listed with their 5 max-activating examples (the 24 characters before the token, the token,
   6 after).
   Reference rows: the same layer replaced by its best rank-32 linear approximation (PCA on the SAE's training
   activations, as many dimensions as the SAE has active latents) and by its mean (mean ablation).
Summary: each figure is the worse of the two layers (higher loss, FVU and L0, lower alive fraction);
``worse_layer`` is the layer whose SAE raises the loss more. Figures to reach (the issue's): loss increase
<= 10% and >= 80% of latents alive; ``targets_met`` says whether both were.
Peer: SAELens, the reference SAE library, is not installable offline here; none is run.
Everything runs on one thread (see ``main``), the model's training included.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import add_mode_args, load_script, pick, write_results  # noqa: E402

MODEL_LR = 8e-3  # benchmarks/prune/charlm.py's DENSE_LR: the fp32 reference model of the compression benchmarks
MAX_LOSS_INCREASE = 0.10  # the figures to reach
MIN_ALIVE_FRACTION = 0.80
ALIVE_TOKENS = 10_000


def _quantize_charlm() -> Any:
    """benchmarks/quantize/charlm.py as a module: its training function and batches are the reference's."""
    return load_script("quantize", "charlm")


@torch.no_grad()
def collect(model: torch.nn.Module, corpus: Any, sites: list[str], tokens: int, seed: int) -> dict[str, torch.Tensor]:
    """Activations at every site for ``tokens`` positions of 64-character training windows (one pass for all)."""
    from nnforge.explain.sae import capture

    gen = torch.Generator().manual_seed(seed)
    block, width = model.config.block_size, model.config.n_embd
    out = {s: torch.empty(tokens, width) for s in sites}  # filled in place: no second copy of ~1 GB
    n = 0
    model.eval()
    with capture(model, sites) as seen:
        while n < tokens:
            x, _ = corpus.batch("train", 64, block, gen)
            model(x)
            take = min(x.numel(), tokens - n)
            for s in sites:
                out[s][n : n + take] = seen[s].pop().reshape(-1, width)[:take]
            n += take
    return out


@torch.no_grad()
def replaced_loss(model: torch.nn.Module, site: str, fn: Any, val: list[Any]) -> float:
    """Mean val loss with the activations at ``site`` replaced by ``fn(activations)``."""
    from nnforge.explain.sae import replace_activations

    model.eval()
    with replace_activations(model, site, fn):
        return sum(float(model(x, y)[1]) for x, y in val) / len(val)


def references(model: torch.nn.Module, site: str, acts: torch.Tensor, rank: int, val: list[Any]) -> dict[str, Any]:
    """The layer replaced by its best rank-``rank`` linear approximation (PCA) and by its mean."""
    mean = acts.mean(0)
    centred = acts[:200_000] - mean
    _, vecs = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    basis = vecs[:, -rank:]  # (d, rank)

    def pca(h: torch.Tensor) -> torch.Tensor:
        return mean + (h - mean) @ basis @ basis.T

    return {"pca_rank": rank, "val_loss_pca": replaced_loss(model, site, pca, val),
            "val_loss_mean_ablated": replaced_loss(model, site, lambda h: mean.expand_as(h), val)}


def run_layer(model: torch.nn.Module, corpus: Any, site: str, acts: torch.Tensor, config: Any,
              val: list[Any]) -> dict[str, Any]:
    from nnforge.explain.sae import evaluate_sae, train_sae

    t0 = time.perf_counter()
    sae, report = train_sae(acts, config)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate_sae(sae, model, val, site=site, alive_tokens=ALIVE_TOKENS, top_features=8, examples=5,
                          decode=corpus.decode, context=24)
    row = {"site": site, "train_tokens": len(acts), "train_seconds": train_seconds,
           "eval_seconds": time.perf_counter() - t0, "training": report.to_dict(), **result.to_dict()}
    row.update(references(model, site, acts, config.k, val))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    from nnforge.data import load
    from nnforge.explain.sae import SAEConfig

    started = time.perf_counter()
    # one thread: on this shared 2-core machine a second one mostly spins in OpenMP barriers (a validation forward
    # pass measured 25x slower with 2 threads than with 1 under a load of 4); no timing is compared here
    torch.set_num_threads(1)
    q = _quantize_charlm()
    corpus = load("shakespeare-char")
    steps, n_val = pick(args, full=(2000, 200), quick=(150, 20), smoke=(4, 2))
    model_options = pick(args, full={}, quick={}, smoke={"n_layer": 2, "n_head": 2, "n_embd": 32})
    sae_tokens, sae_steps, sae_batch = pick(args, full=(1_500_000, 800, 4096), quick=(200_000, 300, 2048),
                                            smoke=(4096, 5, 512))
    k = pick(args, full=32, quick=32, smoke=8)
    val = q.batches(corpus, n_val, 12345, "val")
    model, model_loss, model_secs = q.train(corpus, MODEL_LR, steps, val, model_options=model_options)
    print(f"char-GPT lr {MODEL_LR:g}, {steps} steps: val {model_loss:.4f} ({model_secs:.0f} s)", flush=True)
    n_layer = model.config.n_layer
    sites = [f"residual.{n_layer // 2}", f"residual.{n_layer}"]
    t0 = time.perf_counter()
    acts = collect(model, corpus, sites, sae_tokens, seed=2_000_003)
    collect_secs = time.perf_counter() - t0
    config = SAEConfig(architecture="topk", expansion=8, k=k, aux_k=2 * k, steps=sae_steps, batch_size=sae_batch,
                       lr=1e-3, warmup_steps=min(50, sae_steps // 10),
                       seed=0)
    rows = []
    for site in sites:
        row = run_layer(model, corpus, site, acts[site], config, val)
        rows.append(row)
        top = row["features"][0] if row["features"] else None
        example = str(top["examples"][0]["before"] + "[" + top["examples"][0]["token"] + "]") if top else "-"
        print(f"{site}: val {row['val_loss']:.4f} -> {row['val_loss_with_sae']:.4f} with the SAE "
              f"({100 * row['loss_increase']:+.2f}%), FVU {row['fvu']:.4f}, L0 {row['l0']:.1f}, alive "
              f"{row['alive']}/{row['d_sae']} ({row['train_seconds']:.0f} s training); PCA-{k} "
              f"{row['val_loss_pca']:.4f}, mean-ablated {row['val_loss_mean_ablated']:.4f}; top feature: {example!r}",
              flush=True)
    worse = max(rows, key=lambda r: r["loss_increase"])
    loss_increase = max(r["loss_increase"] for r in rows)
    alive_fraction = min(r["alive_fraction"] for r in rows)
    summary = {
        "val_loss": model_loss,
        "val_loss_with_sae": max(r["val_loss_with_sae"] for r in rows),
        "val_loss_increase": loss_increase,
        "alive_fraction": alive_fraction,
        "l0": max(r["l0"] for r in rows),
        "fvu": max(r["fvu"] for r in rows),
        "relative_mse": max(r["relative_mse"] for r in rows),
        "worse_layer": worse["site"],
        "targets_met": loss_increase <= MAX_LOSS_INCREASE and alive_fraction >= MIN_ALIVE_FRACTION,
    }
    path = write_results(
        "explain", "sae", args=args, results=rows, summary=summary,
        extra={"setup": {"model": "char-gpt", "model_options": model_options, "model_steps": steps,
                         "model_lr": MODEL_LR, "model_train_seconds": model_secs, "sites": sites,
                         "sae_config": config.to_dict(), "sae_train_tokens": sae_tokens,
                         "activation_seed": 2_000_003, "collect_seconds": collect_secs, "val_batches": n_val,
                         "val_tokens": n_val * 12 * 64, "alive_tokens": ALIVE_TOKENS,
                         "threads": torch.get_num_threads(), "total_seconds": time.perf_counter() - started,
                         "peer": "SAELens is not installable offline here; none is run"},
               "targets": {"val_loss_increase_at_most": MAX_LOSS_INCREASE,
                           "alive_fraction_at_least": MIN_ALIVE_FRACTION}})
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
