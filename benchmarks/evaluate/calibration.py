"""Benchmark: calibration of the fp32 fine-tuned quickstart model, before and after temperature scaling.

    python benchmarks/evaluate/calibration.py           # full: the quickstart's baselines + finetune as shipped
    python benchmarks/evaluate/calibration.py --quick   # a small slice (under a minute)
    python benchmarks/evaluate/calibration.py --smoke   # 1 passage per play, 1 epoch, LoRA on one layer; writes nothing

The model: the built-in ``quickstart`` recipe (seed 0) run through ``nnforge.recipes`` in a temporary
folder with its first two steps only (``baselines``, ``finetune``: LP-FT with LoRA on MiniLM, class-balanced
loss, WiSE-FT); the later steps (quantize, evaluate, report) do not touch the fp32 weights and are dropped.
The fp32 model is loaded back with ``load_run``. The temperature is fitted on the validation plays; ECE
(15 equal-width bins), NLL, Brier and accuracy are measured on the test plays before and after.

Writes benchmarks/results/evaluate_calibration.json (full) or .quick.json, and the reliability diagram of
the full run to docs/calibration_reliability.png (quick mode: into the temporary work folder).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import add_mode_args, mode, pick, spread, write_results  # noqa: E402

N_BINS = 15
BOOTSTRAP = 1000
QUICK = ["data.options.passages_per_play=8", "data.max_train=96", "steps[1].train.epochs=1"]
SMOKE = ["data.options.passages_per_play=1", "data.max_train=12", "steps[1].train.epochs=1", "steps[1].lora.layers=[5]"]


def fine_tuned_model(overrides: list[str], workdir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """Run the quickstart's ``baselines`` + ``finetune`` steps; the fp32 model (via load_run) and the recipe."""
    import yaml

    from nnforge.ledger import Ledger
    from nnforge.recipes import builtin_dir, load_run, parse_recipe, run_recipe
    from nnforge.recipes.schema import apply_overrides

    path = builtin_dir() / "quickstart.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    kept = [s if isinstance(s, str) else next(iter(s)) for s in doc["steps"]][:2]
    if kept != ["baselines", "finetune"]:
        raise SystemExit(f"the quickstart recipe changed: its first steps are {kept}, not baselines, finetune")
    doc["steps"] = doc["steps"][:2]
    doc = apply_overrides(doc, overrides)
    recipe = parse_recipe(doc, source=yaml.safe_dump(doc, sort_keys=False), path=str(path))
    result = run_recipe(recipe, runs_dir=workdir / "runs", ledger=Ledger.open(workdir / ".nnforge" / "ledger.db"))
    run = load_run(result.run_dir)
    return run.model("fp32"), recipe, result.metrics


@torch.inference_mode()
def logits_of(model: Any, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """(N, C) float32 logits in the order given; batched by length for less padding."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), model.num_classes)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        b = model.tokenize([texts[j] for j in idx])
        out[idx] = model(b["input_ids"], b["attention_mask"]).float()
    return out


def measures(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    from nnforge.evaluate.calibration import (
        brier_score,
        expected_calibration_error,
        negative_log_likelihood,
        reliability_diagram,
    )

    return {"ece": expected_calibration_error(probs, labels, N_BINS), "nll": negative_log_likelihood(probs, labels),
            "brier": brier_score(probs, labels), "accuracy": float((probs.argmax(-1) == labels).float().mean()),
            "mean_confidence": float(probs.max(-1).values.mean()),
            "ece_bins": {str(b): expected_calibration_error(probs, labels, b) for b in (10, 15, 20)},
            "predicted_class_fractions": torch.bincount(probs.argmax(-1), minlength=probs.shape[1]).div(
                len(labels)).tolist(),
            "reliability": reliability_diagram(probs, labels, N_BINS).to_dict()}


def bootstrap_ece(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor, n: int) -> dict[str, Any]:
    """Test-set resampling (paired, seed 0): the spread of ECE before, after, and of their ratio."""
    from nnforge.evaluate.calibration import expected_calibration_error

    gen = torch.Generator().manual_seed(0)
    b, a, r = [], [], []
    for _ in range(n):
        idx = torch.randint(0, len(labels), (len(labels),), generator=gen)
        eb = expected_calibration_error(before[idx], labels[idx], N_BINS)
        ea = expected_calibration_error(after[idx], labels[idx], N_BINS)
        b.append(eb)
        a.append(ea)
        r.append(ea / eb if eb > 0 else float("nan"))
    rs = sorted(x for x in r if x == x)  # NaN (a resample with ECE 0 before) dropped
    q = [rs[int(0.025 * len(rs))], rs[max(0, int(0.975 * len(rs)) - 1)]] if rs else None
    return {"resamples": n, "ece_before": spread(b), "ece_after": spread(a), "ratio_after_over_before": spread(rs) if rs else None,
            "ratio_undefined_resamples": len(r) - len(rs), "ratio_ci95": q,
            "fraction_reaching_0.7": sum(x <= 0.7 for x in r) / n}


def vector_scaling(val_logits: torch.Tensor, val_labels: torch.Tensor, steps: int = 500) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Vector scaling (Guo et al. 2017): per-class scale w and bias b, ``w * z + b``, fitted on validation NLL.

    Reported beside temperature scaling as an analysis peer only: unlike T, it can change the argmax.
    """
    w = torch.ones(val_logits.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(val_logits.shape[1], dtype=torch.float64, requires_grad=True)
    z, y = val_logits.to(torch.float64), val_labels
    opt = torch.optim.LBFGS([w, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * w + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    ap.add_argument("--keep", metavar="DIR", help="run in DIR and keep runs/ and .nnforge/ there")
    args = ap.parse_args()
    if mode(args) == "smoke":
        # checks the code, not the speed: one thread, as quantize/minilm.py does (two spin against each other
        # on a loaded machine: a third of the CPU time)
        torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    full = mode(args) == "full"

    from nnforge import data as data_mod
    from nnforge.evaluate.calibration import TemperatureScaling, plot_reliability, reliability_diagram

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="nnforge-calib-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, recipe, run_metrics = fine_tuned_model(pick(args, full=[], quick=QUICK, smoke=SMOKE), workdir)
    t_model = time.perf_counter() - t0

    dataset = data_mod.load(recipe.data.dataset, **recipe.data.options)
    val, test = dataset.split(recipe.data.val_split or "val"), dataset.split(recipe.data.test_split)
    z_val, z_test = logits_of(model, list(val.texts)), logits_of(model, list(test.texts))
    y_val, y_test = torch.tensor(list(val.labels)), torch.tensor(list(test.labels))

    ts = TemperatureScaling().fit(z_val, y_val)
    p_before, p_after = torch.softmax(z_test.double(), -1), ts.probs(z_test.double())
    test_before, test_after = measures(p_before, y_test), measures(p_after, y_test)
    val_before, val_after = measures(torch.softmax(z_val.double(), -1), y_val), measures(ts.probs(z_val.double()),
                                                                                          y_val)
    if not torch.equal(p_before.argmax(-1), p_after.argmax(-1)):
        raise SystemExit("temperature scaling changed a prediction: this is a bug")
    w, b = vector_scaling(z_val, y_val)
    p_vector = torch.softmax(z_test.double() * w + b, -1)
    vector_test = {k: v for k, v in measures(p_vector, y_test).items() if k != "reliability"}
    peer_vector = {"scale": w.tolist(), "bias": b.tolist(), "test": vector_test}
    boot = bootstrap_ece(p_before, p_after, y_test, pick(args, full=BOOTSTRAP, quick=200, smoke=50))

    # only a full run's plot goes into the repository; others stay in the (temporary) work folder
    img = (ROOT.parent / "docs" / "calibration_reliability.png") if full else (workdir / "calibration_reliability.png")
    plot_reliability({"fine-tuned, before": reliability_diagram(p_before, y_test, N_BINS),
                      f"temperature-scaled (T={ts.temperature:.3f})": reliability_diagram(p_after, y_test, N_BINS)},
                     img, title="quickstart fp32 model, test plays")
    seconds = time.perf_counter() - t0

    ece_ratio = test_after["ece"] / test_before["ece"] if test_before["ece"] > 0 else None
    summary = {"ece_before": test_before["ece"], "ece_after": test_after["ece"], "ece_ratio": ece_ratio,
               # paired test-set bootstrap (the same resampled passages before and after), widened to hold the
               # point estimate should the percentile interval miss it
               "ece_ratio_ci": [min(boot["ratio_ci95"][0], ece_ratio), max(boot["ratio_ci95"][1], ece_ratio)]
               if ece_ratio is not None and boot["ratio_ci95"] else None,
               "temperature": ts.temperature, "nll_before": test_before["nll"], "nll_after": test_after["nll"],
               "brier_before": test_before["brier"], "brier_after": test_after["brier"],
               "accuracy_before": test_before["accuracy"], "accuracy_after": test_after["accuracy"],
               "val_ece_before": val_before["ece"], "val_ece_after": val_after["ece"],
               "vector_scaling_ece": vector_test["ece"], "vector_scaling_accuracy": vector_test["accuracy"], "n_test": len(y_test), "n_val": len(y_val), "n_bins": N_BINS,
               "model_seconds": t_model, "seconds": seconds}
    results = {"test": {"before": test_before, "after": test_after}, "val": {"before": val_before, "after": val_after},
               "temperature_scaling": ts.to_dict(), "bootstrap_test": boot, "peer_vector_scaling": peer_vector,
               "run_metrics": run_metrics, "label_names": dataset.label_names,
               "logits": {"val": z_val.tolist(), "val_labels": y_val.tolist(), "test": z_test.tolist(),
                          "test_labels": y_test.tolist()}}
    no_ci = None if summary["ece_ratio_ci"] is not None else {"ece_ratio": "undefined: ECE before the scaling is 0"}
    path = write_results("evaluate", "calibration", args=args, results=results, summary=summary, no_ci=no_ci,
                         packages=("transformers", "peft", "scikit-learn", "matplotlib"),
                         extra={"recipe": recipe.to_dict(), "setup": {"n_bins": N_BINS, "seed": recipe.seed,
                                                                      "steps_run": ["baselines", "finetune"],
                                                                      "plot": str(img.relative_to(ROOT.parent) if full else img)}})
    if path:
        print(f"wrote {path} and {img}")
    if mode(args) == "smoke" and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    for k, v in summary.items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
