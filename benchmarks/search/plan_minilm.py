"""Benchmark: mixed-precision plans for all-MiniLM-L6-v2 found by compression-plan search, against uniform int4.

    python benchmarks/search/plan_minilm.py            # full: 60 trials, 2,000 evaluation lines
    python benchmarks/search/plan_minilm.py --quick    # 4 trials, 300 evaluation lines
    python benchmarks/search/plan_minilm.py --smoke    # 2 trials over 3 layers, RTN, 64 lines; writes nothing

Texts and fidelity are those of ``benchmarks/quantize/minilm.py``: Shakespeare lines, embeddings mean-pooled and
L2-normalised, mean cosine (and min cosine, nearest-neighbour agreement) to torch fp32 over the evaluation lines
(2,000 sampled with seed 0); GPTQ calibrates on its 256 calibration lines (16 batches of 16, seed 1, disjoint).

The search (``nnforge.search.plan.plan_search``, Optuna TPE, seed 0) gives every encoder Linear a choice of
int8 per row, int4 in groups of 32 or 128, int3 in groups of 32, and every embedding table one of int8 per row,
int4 g32 or g128; every (layer, choice) is quantized once from the float model's calibration statistics,
exactly as ``quantize_`` quantizes it (``PlanQuantizer``; GPTQ with act-order, asymmetric, asymmetric int4
embeddings: the most faithful uniform int4 recipe of quantize_minilm), and a plan puts its layers together and is scored by mean cosine on ``selection`` lines taken after the calibration lines (disjoint
from the evaluation and calibration lines) and by ``measure_model``'s size and batch-1 latency, with the
constraint ``size_mb <= 15``. The chosen plan is the most faithful feasible trial on the selection lines; only
it and the uniform baseline are then measured on the evaluation lines. Baseline: uniform int4 g32 GPTQ, the
``int4 g32 GPTQ`` row of quantize_minilm. Batch-1 latencies of both are interleaved (ratio with a bootstrap 95%
interval). In full mode the trials' (size, selection cosine) and the Pareto front are plotted to
``docs/search_plan_minilm.png``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, mode, pick, ratio_with_ci, spread, write_results  # noqa: E402
from quantize.minilm import KEYS, Encoder, calibration_lines, fidelity, pool, shakespeare_lines  # noqa: E402

SIZE_LIMIT_MB = 15.0
COS_TARGET = 0.995


def _encode(tok: Any, lines: list[str], batch: int) -> list[dict[str, torch.Tensor]]:
    return [dict(tok(lines[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt"))
            for i in range(0, len(lines), batch)]


def _embed(model: torch.nn.Module, encs: list[dict[str, torch.Tensor]]) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([pool(model(**{k: e[k] for k in KEYS}), e["attention_mask"]) for e in encs])


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**{k: batch[k] for k in KEYS})


def size_limit(run_mode: str) -> float:
    """15 MB; in smoke mode, where only 3 layers are searched and the rest stay fp32, any size (the code path only)."""
    return 1e9 if run_mode == "smoke" else SIZE_LIMIT_MB


def configs(run_mode: str, encoder: torch.nn.Module, trials: int) -> tuple[Any, Any]:
    """(the plan search's config, uniform int4 g32 GPTQ) for this mode."""
    from nnforge.compress import WeightOnlyConfig
    from nnforge.search import Objective
    from nnforge.search.plan import PlanSearchConfig

    calibrator = "rtn" if run_mode == "smoke" else "gptq"
    base = WeightOnlyConfig(fmt="int4", group_size=32, symmetric=False, calibrator=calibrator, embedding_fmt="int4",
                            embedding_group_size=32, embedding_symmetric=False, act_order=calibrator == "gptq")
    uniform = WeightOnlyConfig(fmt="int4", group_size=32, symmetric=False, calibrator=calibrator, embedding_fmt="int4",
                               embedding_group_size=32)
    linears = [n for n, m in encoder.named_modules() if isinstance(m, torch.nn.Linear) and ".encoder." in n]
    embeddings = [n for n, m in encoder.named_modules() if isinstance(m, torch.nn.Embedding)]
    modules = [*embeddings, *linears] if run_mode != "smoke" else [embeddings[0], *linears[:2]]
    config = PlanSearchConfig(formats=["int8/row", "int4/g32", "int4/g128", "int3/g32"],
                              embedding_formats=["int8/row", "int4/g32", "int4/g128"], modules=modules, quantize=base,
                              objectives=[Objective(metric="cos_mean", direction="maximize"), Objective(metric="size_mb"),
                                          Objective(metric="latency_b1_ms")],
                              constraints=[f"size_mb <= {size_limit(run_mode)}"], sampler="tpe",
                              trials=trials, seed=0, study_name="plan-minilm")
    return config, uniform


def plot(trials: list[dict[str, Any]], front: list[int], uniform: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([t["size_mb"] for t in trials], [t["cos_mean"] for t in trials], s=12, c="0.6", label="trials")
    pareto = sorted((t for t in trials if t["number"] in front), key=lambda t: t["size_mb"])
    ax.plot([t["size_mb"] for t in pareto], [t["cos_mean"] for t in pareto], "o-", c="C0", label="Pareto front")
    ax.scatter([uniform["size_mb"]], [uniform["selection_cos_mean"]], marker="x", s=60, c="C3",
               label="uniform int4 g32 GPTQ")
    ax.axvline(SIZE_LIMIT_MB, ls="--", c="0.4", lw=0.8)
    ax.axhline(COS_TARGET, ls=":", c="0.4", lw=0.8)
    ax.set_xlabel("size (MB)"), ax.set_ylabel("mean cosine to fp32 (selection lines)")
    ax.set_title("all-MiniLM-L6-v2: mixed-precision plans (TPE)"), ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    run_mode = mode(args)
    from nnforge.compress import quantize_
    from nnforge.hardware import interleave, measure_model
    from nnforge.models import load
    from nnforge.search.plan import plan_from_params, plan_search

    if run_mode == "smoke":
        torch.set_num_threads(1)
    n_lines, n_sel, n_cal, reps = pick(args, full=(2000, 512, 16, 30), quick=(300, 64, 4, 8), smoke=(64, 16, 1, 2))
    clf = load("minilm")
    tok, fp32 = clf.tokenizer, Encoder(clf.encoder).eval()
    lines = shakespeare_lines(n_lines)
    held = calibration_lines(16 * n_cal + n_sel, n_lines)  # disjoint from the evaluation lines
    calib = _encode(tok, held[:16 * n_cal], 16)
    select = _encode(tok, held[16 * n_cal:], 64)
    evaluate = _encode(tok, lines, 64)
    one = dict(tok([lines[0]], return_tensors="pt"))
    select_ref, eval_ref = _embed(fp32, select), _embed(fp32, evaluate)
    config, uniform_config = configs(run_mode, fp32, pick(args, full=60, quick=4, smoke=2))
    measure = {"repeats": pick(args, full=10, quick=3, smoke=1), "warmup": 1}

    def selection_fidelity(model: torch.nn.Module) -> dict[str, float]:
        return {"cos_mean": fidelity(_embed(model, select), select_ref)["cos_mean"]}

    with tempfile.TemporaryDirectory(prefix="plan-minilm-") as tmp:
        result = plan_search(fp32, one, selection_fidelity, config, storage=Path(tmp) / "plans.journal",
                             calibration=calib, forward=_forward, measure=measure)
    trials = [{"number": t.number, "state": t.state, "feasible": t.feasible, **t.metrics,
               "plan": plan_from_params(t.params)} for t in result.trials if t.state == "complete"]
    feasible = [t for t in trials if t["feasible"]]
    chosen = max(feasible, key=lambda t: t["cos_mean"]) if feasible else None
    print(f"{len(trials)} trials, {len(feasible)} within {size_limit(run_mode)} MB", flush=True)

    # --- the chosen plan and uniform int4 on the evaluation lines --------------------------------------------
    from nnforge.search.plan import apply_plan

    uniform = copy.deepcopy(fp32)
    quantize_(uniform, uniform_config, calibration=calib, forward=_forward)
    models = {"uniform int4 g32 GPTQ": uniform}
    if chosen is not None:
        models["searched plan"] = apply_plan(fp32, chosen["plan"], config, calibration=calib, forward=_forward)
    rows: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        hw = measure_model(model, one, repeats=1, warmup=0)
        rows[name] = {"name": name, "size_mb": hw["size_mb"], **fidelity(_embed(model, evaluate), eval_ref),
                      "selection_cos_mean": selection_fidelity(model)["cos_mean"],
                      "energy_j_per_inference": hw["energy_j_per_inference"], "energy_source": hw["energy_source"]}
    t1 = interleave({n: functools.partial(_forward, m, one) for n, m in models.items()}, rounds=reps, warmup=2)
    for name, row in rows.items():
        row["latency_b1_ms"], row["latency_b1"] = statistics.median(t1[name]), spread(t1[name])
        print(f"{name:24s} {row['size_mb']:6.2f} MB cos {row['cos_mean']:.4f} b1 {row['latency_b1_ms']:.2f} ms",
              flush=True)
    base = rows["uniform int4 g32 GPTQ"]
    best = rows.get("searched plan")
    summary: dict[str, Any] = {
        "best_size_mb": best["size_mb"] if best else None, "best_cos_mean": best["cos_mean"] if best else None,
        "uniform_int4_cos_mean": base["cos_mean"], "uniform_int4_size_mb": base["size_mb"],
        "best_meets_target": bool(best and best["size_mb"] <= SIZE_LIMIT_MB and best["cos_mean"] >= COS_TARGET),
        "best_beats_uniform_int4": bool(best and best["cos_mean"] > base["cos_mean"]),
        "trials": len(trials), "feasible_trials": len(feasible)}
    if best:
        ratio, ci = ratio_with_ci(t1["searched plan"], t1["uniform int4 g32 GPTQ"])
        summary["best_latency_vs_uniform_int4_ratio"], summary["best_latency_vs_uniform_int4_ratio_ci"] = ratio, list(ci)
    front = [t.number for t in result.best]
    path = write_results("search", "plan_minilm", args=args, results=list(rows.values()), summary=summary,
                         peers={"uniform int4 g32 GPTQ": uniform_config.to_dict()},
                         packages=("optuna", "transformers"),
                         extra={"trials": trials, "pareto_front": front, "chosen_trial": chosen["number"] if chosen else None,
                                "search": config.to_dict(),
                                "setup": {"lines": n_lines, "selection_lines": n_sel, "calibration_batches": n_cal,
                                          "latency_repeats": reps, "threads": torch.get_num_threads(),
                                          "tokens_b1": int(one["input_ids"].shape[1]),
                                          "size_limit_mb": SIZE_LIMIT_MB, "cos_target": COS_TARGET}})
    if run_mode == "full":
        plot(trials, front, base, Path(__file__).resolve().parents[2] / "docs" / "search_plan_minilm.png")
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
