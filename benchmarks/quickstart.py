"""Benchmark: the quickstart end to end (what `make demo` runs), with its figures.

    python benchmarks/quickstart.py           # full: the built-in quickstart recipe as shipped
    python benchmarks/quickstart.py --quick   # a small slice (a minute or two)
    python benchmarks/quickstart.py --smoke   # 1 passage per play, 1 epoch, LoRA on one layer, no gate or report; writes nothing

Writes benchmarks/results/foundation_quickstart.json (full) or .quick.json: the run's metrics, and its
report's out-of-distribution section (``ood``: AUROC, FPR at 95% TPR and the fraction flagged at the saved
threshold, per detector and OOD set). The run itself (report, ledger, weights) lands in a temporary folder
unless --keep DIR is given. ``fine_tuned_beats_logreg`` is true only when the paired bootstrap interval of
fine-tuned minus frozen-logreg test accuracy (``finetune_gain_ci``) lies above 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_mode_args, mode, pick, write_results  # noqa: E402

SUMMARY_KEYS = ("baseline_majority_acc", "baseline_logreg_acc", "fp32_acc", "int8_acc", "fp32_size_mb", "int8_size_mb",
                "int8_cos_mean", "int8_cos_min", "fp32_latency_b1_ms", "int8_latency_b1_ms", "fp32_throughput_b32",
                "int8_throughput_b32", "fp32_macro_f1", "int8_macro_f1",
                # the int8 weights in the native runtime (evaluate step's `native`), where it is built
                "int8-native_acc", "int8-native_cos_mean", "int8-native_agreement", "int8-native_latency_b1_ms",
                "int8-native_throughput_b32",
                # fine-tuned (fp32) minus frozen-logreg test accuracy on the same passages: paired bootstrap 95%
                # interval [lo, hi] and McNemar's exact p (evaluate step)
                "finetune_gain", "finetune_gain_ci", "finetune_gain_mcnemar_p")
QUICK = ["data.options.passages_per_play=8", "data.max_train=96", "steps[1].train.epochs=1", "steps[3].repeats=5",
         "steps[4].enforce=false"]  # a small slice cannot meet the suite's accuracy bars: record, do not stop
# smoke: the smallest slice that still runs every step the summary reads (baselines, finetune, quantize, evaluate)
SMOKE = ["data.options.passages_per_play=1", "data.max_train=12", "steps[1].train.epochs=1", "steps[1].lora.layers=[5]",
         "steps[3].repeats=3",
         "steps[3].ood=false", "steps[3].calibration=false", "steps[3].native=false",
         "steps[3].memory=false"]  # memory: one fresh process per variant, each importing torch and loading it
SMOKE_STEPS = 4


def smoke_recipe() -> Any:
    """The built-in quickstart recipe cut to its first four steps, on the SMOKE slice."""
    import yaml

    from nnforge.recipes import builtin_dir, parse_recipe
    from nnforge.recipes.schema import apply_overrides

    path = builtin_dir() / "quickstart.yaml"
    doc = apply_overrides(yaml.safe_load(path.read_text(encoding="utf-8")), SMOKE)
    doc["steps"] = doc["steps"][:SMOKE_STEPS]
    return parse_recipe(doc, source=yaml.safe_dump(doc, sort_keys=False), path=str(path))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    ap.add_argument("--keep", metavar="DIR", help="run in DIR and keep runs/ and .nnforge/ there")
    args = ap.parse_args()
    if mode(args) == "smoke":
        # checks the code, not the speed: one thread, as quantize/minilm.py does (two spin against each other
        # on a loaded machine: 44 CPU seconds instead of 15 for the quickstart's smoke run)
        import torch

        torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from nnforge.ledger import Ledger
    from nnforge.recipes import load_recipe, run_recipe

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="nnforge-qs-"))
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = smoke_recipe() if mode(args) == "smoke" else load_recipe("quickstart", pick(args, full=[], quick=QUICK,
                                                                                        smoke=[]))
    t0 = time.perf_counter()
    result = run_recipe(recipe, runs_dir=workdir / "runs", ledger=Ledger.open(workdir / ".nnforge" / "ledger.db"))
    seconds = time.perf_counter() - t0
    m = result.metrics
    summary = {k: m[k] for k in SUMMARY_KEYS if k in m}
    summary["run_seconds"] = seconds
    # a claim tested, not eyeballed: better only when the paired interval of the gain excludes 0
    gain_low = (m.get("finetune_gain_ci") or [None])[0]
    summary["fine_tuned_beats_logreg"] = gain_low is not None and gain_low > 0
    summary["int8_size_ratio"] = m["int8_size_mb"] / m["fp32_size_mb"]
    sections_file = Path(result.run_dir) / "sections.json"
    ood = json.loads(sections_file.read_text()).get("ood") if sections_file.is_file() else None
    path = write_results("foundation", "quickstart", args=args, results=m, summary=summary,
                         no_ci={"int8_size_ratio": "a ratio of file sizes in bytes: exact, not sampled"},
                         packages=("transformers", "peft", "scikit-learn"),
                         extra={"recipe": recipe.to_dict(), "run_dir": str(result.run_dir), "ood": ood})
    if not args.keep and mode(args) == "smoke":
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {path}" if path else "")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
