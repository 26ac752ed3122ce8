"""Benchmark: linear datamodeling score (LDS) of training-data attribution on a small digits model.

    python benchmarks/explain/lds.py           # full: 64 random halves, TRAK on 10 models, all 360 test queries
    python benchmarks/explain/lds.py --quick   # 20 halves, TRAK on 3 models
    python benchmarks/explain/lds.py --smoke   # 150 examples, 20 steps, 4 halves; writes nothing

The LDS of Park et al. (2023, TRAK): draw M random subsets S_j holding 50% of the training set and train a model
on each (the digits MLP, 64-128-64-10, with the built-in digits recipe: AdamW 3e-3, weight decay 0.01, batch 64,
300 steps, warm-up + cosine; seed j). For a test example z its margin ``f(z; θ_S_j)`` (log p/(1-p) of the true
class) is the truth; an attribution method's prediction is ``Σ_{i ∈ S_j} τ(z)_i``. LDS(z) is the Spearman
correlation of the two over the M subsets; the figure is its mean over the test examples, with a 95% bootstrap
interval over test examples (paired between methods for the gains).

Methods, each attributing models trained on the whole training set:

- ``trak``: TRAK (library defaults: 2048-dimensional Rademacher projection, damping 0.01, (1 − p) reweighting)
  on an ensemble of K independently trained models, as its authors recommend;
- ``tracin``: TracInCP over the checkpoints of one training run (every 30 steps, 10 kept) with the lr each
  recorded, exact gradients of every parameter, as its authors recommend;
- ``trak_checkpoints`` (not in quick mode): TRAK on those same checkpoints (like-for-like with TracIn);
- ``random``: Gaussian scores (seeded), the floor;
- ``traker`` (full mode, when the ``traker`` package is installed): the authors' implementation on the same K
  models, on a CPU (BasicProjector, lambda_reg 0) with float32 features and proj_dim 1024: its default 2048 exceeds
  the 1437 training examples, which makes its unregularised kernel singular;
- in full mode, a sensitivity sweep of this package's TRAK settings (reported apart; the summary uses defaults).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _digits import RECIPE, bootstrap_draws, digits, interval, percentile_ci, train  # noqa: E402

from _common import add_mode_args, mode, pick, write_results  # noqa: E402

ARCH = "digits-mlp"
N_BOOT = 2000
SWEEP = {"trak_proj512": {"proj_dim": 512}}
TRAKER_PROJ_DIM = 1024  # below the 1437 training examples: traker inverts ΦᵀΦ without a ridge (lambda_reg 0)


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks along axis 0 (columns ranked separately); ties broken by order, which continuous values never have."""
    return np.argsort(np.argsort(a, axis=0), axis=0).astype(np.float64)


def lds_per_query(scores: np.ndarray, masks: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Spearman correlation per query between ``masks @ scores.T`` and the margins: (Q, N), (M, N), (M, Q) → (Q,)."""
    predicted = masks.astype(np.float64) @ scores.astype(np.float64).T  # (M, Q)
    a, b = _ranks(predicted), _ranks(margins)
    a -= a.mean(0)
    b -= b.mean(0)
    return (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0))


def subset_margins(x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, subsets: int,
                   steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Train one model per random half of the training set; return the masks (M, N) and test margins (M, Q)."""
    from nnforge.explain.data import classification_margin

    rng = np.random.default_rng(0)
    n = len(y)
    masks = np.zeros((subsets, n), dtype=bool)
    margins = []
    for j in range(subsets):
        keep = np.sort(rng.choice(n, n // 2, replace=False))
        masks[j, keep] = True
        idx = torch.from_numpy(keep)
        model = train(ARCH, x[idx], y[idx], seed=j, steps=steps)
        with torch.no_grad():
            logits = model(xt)
        margins.append(np.array([float(classification_margin(logits[i : i + 1], yt[i : i + 1]))
                                 for i in range(len(yt))]))
    return masks, np.stack(margins)


def traker_scores(models: list[torch.nn.Module], x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor,
                  yt: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``traker`` package's TRAK scores (Q, N) on the same models."""
    import trak
    from trak import TRAKer

    config = {"version": getattr(trak, "__version__", None), "task": "image_classification", "device": "cpu",
              "proj_dim": TRAKER_PROJ_DIM, "projector": "BasicProjector (chosen by traker on a CPU)", "lambda_reg": 0.0,
              "use_half_precision": False,
              "why_not_defaults": "traker's default proj_dim 2048 exceeds the 1437 training examples, and with its "
                                  "default lambda_reg 0 the kernel ΦᵀΦ is then singular (a quick run measured LDS "
                                  "-0.01); float32 because half-precision matrix products are slow on a CPU"}
    with tempfile.TemporaryDirectory() as folder:
        tracer = TRAKer(model=models[0], task="image_classification", train_set_size=len(y), device="cpu",
                        proj_dim=TRAKER_PROJ_DIM, save_dir=folder, use_half_precision=False)
        for k, model in enumerate(models):
            tracer.load_checkpoint(model.state_dict(), model_id=k)
            for lo in range(0, len(y), 256):
                tracer.featurize(batch=(x[lo : lo + 256], y[lo : lo + 256]), num_samples=len(y[lo : lo + 256]))
        tracer.finalize_features()
        for k, model in enumerate(models):
            tracer.start_scoring_checkpoint(exp_name="lds", checkpoint=model.state_dict(), model_id=k,
                                            num_targets=len(yt))
            tracer.score(batch=(xt, yt), num_samples=len(yt))
        scores = np.array(tracer.finalize_scores(exp_name="lds"), dtype=np.float64).T  # (N, Q) → (Q, N)
    return scores, config


def attribution_scores(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor,
                       yt: torch.Tensor, ensemble: int, steps: int, every: int) -> tuple[dict[str, np.ndarray], dict[str, float],
                                                                             dict[str, Any]]:
    """Every method's scores (Q, N), its seconds, and the configurations."""
    from nnforge.explain.data import DataAttributionConfig, attribute_data, checkpoints_from_run

    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    configs: dict[str, Any] = {}

    def timed(name: str, fn: Any) -> None:
        start = time.perf_counter()
        scores[name] = np.asarray(fn(), dtype=np.float64)
        seconds[name] = round(time.perf_counter() - start, 2)

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        models = [train(ARCH, x, y, seed=1000 + k, steps=steps, checkpoint_dir=folder if k == 0 else None,
                        checkpoint_every=every if k == 0 else None, keep=10) for k in range(ensemble)]
        seconds["train_full_models"] = round(time.perf_counter() - start, 2)
        checkpoints = checkpoints_from_run(models[0], folder)
        trak = DataAttributionConfig(method="trak", batch_size=256)
        tracin = DataAttributionConfig(method="tracin", batch_size=256)
        timed("trak", lambda: attribute_data(models, (x, y), (xt, yt), trak).scores)
        timed("tracin", lambda: attribute_data(checkpoints, (x, y), (xt, yt), tracin).scores)
        if mode(args) != "quick":  # quick keeps to a couple of minutes
            timed("trak_checkpoints", lambda: attribute_data(checkpoints, (x, y), (xt, yt), trak).scores)
        configs.update({"trak": {**trak.to_dict(), "models": f"{ensemble} independently trained (seeds 1000..)"},
                        "tracin": {**tracin.to_dict(), "checkpoints": [{"step": c.step, "lr": c.learning_rate}
                                                                        for c in checkpoints]},
                        "trak_checkpoints": {**trak.to_dict(), "models": "the tracin checkpoints"}})
        scores["random"] = np.random.default_rng(1).normal(size=(len(yt), len(y)))
        configs["random"] = {"scores": "standard normal, numpy seed 1"}
        if mode(args) == "full":
            try:
                import trak as _  # noqa: F401
            except ImportError:
                configs["traker"] = {"skipped": "the traker package is not installed (pip install traker==0.3.2)"}
            else:
                start = time.perf_counter()
                scores["traker"], configs["traker"] = traker_scores(models, x, y, xt, yt)
                seconds["traker"] = round(time.perf_counter() - start, 2)
        if mode(args) == "full":
            for name, change in SWEEP.items():
                config = trak.replace(**change)
                timed(name, lambda config=config: attribute_data(models, (x, y), (xt, yt), config).scores)
                configs[name] = {**config.to_dict(), "sweep": True}
    return scores, seconds, {k: v for k, v in configs.items() if k in scores or "skipped" in v}


def summarise(per_query: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean LDS per method with bootstrap intervals over test examples, and TRAK's paired gain over TracIn."""
    names = list(per_query)
    table = np.stack([per_query[n] for n in names], axis=1)  # (Q, methods)
    draws = bootstrap_draws(lambda i: np.nanmean(table[i], axis=0), len(table), n_boot=N_BOOT, seed=0)
    summary: dict[str, Any] = {}
    for j, name in enumerate(names):
        value = float(np.nanmean(table[:, j]))
        summary[f"{name}_lds"] = value
        summary[f"{name}_lds_ci"] = interval(value, percentile_ci(draws[:, j]))
    t, r = names.index("trak"), names.index("tracin")
    gain = summary["trak_lds"] - summary["tracin_lds"]
    summary["trak_vs_tracin_lds_gain"] = gain
    summary["trak_vs_tracin_lds_gain_ci"] = interval(gain, percentile_ci(draws[:, t] - draws[:, r]))
    summary["trak_reaches_figure"] = bool(summary["trak_lds"] >= 0.20 and gain > 0)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)  # a small MLP on a shared 2-core machine: threads only wait on each other
    limit, steps, every = pick(args, full=(None, 300, 30), quick=(None, 300, 30), smoke=(150, 20, 10))
    subsets, ensemble = pick(args, full=(64, 10), quick=(20, 3), smoke=(4, 2))
    x, y, xt, yt = digits(limit)
    start = time.perf_counter()
    masks, margins = subset_margins(x, y, xt, yt, subsets, steps)
    subsets_s = round(time.perf_counter() - start, 2)
    scores, seconds, configs = attribution_scores(args, x, y, xt, yt, ensemble, steps, every)
    seconds["train_subset_models"] = subsets_s
    per_query = {name: lds_per_query(s, masks, margins) for name, s in scores.items()}
    main_names = [n for n in per_query if n not in SWEEP]
    summary = summarise({n: per_query[n] for n in main_names})
    sweep = {n: {"lds": float(np.nanmean(per_query[n])), **SWEEP[n]} for n in per_query if n in SWEEP}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    results = {"lds_per_query": {n: v.tolist() for n, v in per_query.items()}, "seconds": seconds,
               "trak_sensitivity": sweep}
    path = write_results("explain", "lds", args=args, results=results, summary=summary, peers=configs,
                         packages=("scikit-learn", "traker"),
                         extra={"setup": {"model": ARCH, "recipe": {**RECIPE, "max_steps": steps},
                                          "subsets": subsets, "subset_fraction": 0.5, "ensemble": ensemble,
                                          "train_examples": len(y), "test_queries": len(yt),
                                          "bootstrap_resamples": N_BOOT, "threads": 1}})
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
