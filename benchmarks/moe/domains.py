"""Benchmark: which experts serve which genre of Shakespeare, and how fine-tuning on one genre moves the routing.

    python benchmarks/moe/domains.py            # full: the built-in moe-charlm-genre recipe as shipped (~10 min)
    python benchmarks/moe/domains.py --quick    # 200 + 60 steps
    python benchmarks/moe/domains.py --smoke    # a tiny model, a few steps; writes nothing

Runs the recipe ``moe-charlm-genre`` (``moe-gpt``, 8 experts, top-2, aux-free: 1,500 steps on all of
shakespeare-char, then 300 steps on the tragedies only) twice, once as shipped and once with
``freeze_router: true`` in the fine-tuning step, and reads each run's ``moe`` section: the experts serving comedy,
tragedy, history and the poems after pre-training and after fine-tuning (load share >= 1/E), and the drift of the
fine-tuning (top-1 agreement, top-k overlap, load shift per layer, on the tragedies' validation windows). Nothing
here is compared with a peer (no library reports routing by domain); the summary states what was measured:
``min_top1_agreement`` and ``max_load_shift`` for each fine-tuning, and ``genre_specialisation`` — per layer, the
largest total-variation distance between two genres' load vectors (0: every genre routed alike).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, mode, pick, write_results  # noqa: E402

QUICK = ["steps[0].train.max_steps=200", "steps[0].train.eval_every=200", "steps[0].eval_batches=10",
         "steps[1].train.max_steps=60", "steps[1].train.eval_every=60", "steps[1].eval_batches=10",
         "steps[1].train.warmup_steps=6"]
SMOKE = ["model.options={n_layer: 1, n_head: 2, n_embd: 32, moe: {num_experts: 4, hidden: 32, "
         "router_options: {k: 2}, balance: aux-free}}",
         *[f"steps[{i}].{k}" for i in (0, 1) for k in ("train.max_steps=4", "train.eval_every=4", "eval_batches=2",
                                                        "routing_batches=1", "train.warmup_steps=1")]]


def specialisation(load: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Per layer: the largest total-variation distance between two groups' expert-load vectors."""
    groups = list(load)
    layers = list(load[groups[0]]) if groups else []
    return {layer: max((0.5 * sum(abs(x - y) for x, y in zip(load[a][layer], load[b][layer], strict=True))
                        for a, b in itertools.combinations(groups, 2)), default=0.0) for layer in layers}


def run(overrides: list[str], workdir: Path) -> dict[str, Any]:
    import json

    from nnforge.ledger import Ledger
    from nnforge.recipes import load_recipe, run_recipe

    recipe = load_recipe("moe-charlm-genre", overrides)
    result = run_recipe(recipe, runs_dir=workdir / "runs", ledger=Ledger.open(workdir / "ledger.db"))
    moe = json.loads((Path(result.run_dir) / "sections.json").read_text())["moe"]
    drift = moe["drift"]
    return {"overrides": overrides, "run_id": result.run_id, "metrics": result.metrics,
            "serving_after_pretraining": moe["by_group_before"]["serving"],
            "serving_after_finetuning": moe["by_group"]["serving"],
            "load_after_pretraining": moe["by_group_before"]["load"], "load_after_finetuning": moe["by_group"]["load"],
            "drift": drift, "min_top1_agreement": min(d["top1_agreement"] for d in drift),
            "max_load_shift": max(d["load_shift"] for d in drift),
            "genre_specialisation": specialisation(moe["by_group_before"]["load"])}


def plot(rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shipped = rows["shipped"]
    before, after = shipped["load_after_pretraining"], shipped["load_after_finetuning"]
    groups, layers = list(before), list(before[next(iter(before))])
    fig, axes = plt.subplots(2, len(layers), figsize=(2.8 * len(layers) + 1, 4.6), squeeze=False)
    for row, (title, load) in enumerate((("after pre-training", before), ("after fine-tuning on tragedy", after))):
        for col, layer in enumerate(layers):
            ax = axes[row][col]
            im = ax.imshow([load[g][layer] for g in groups], aspect="auto", cmap="viridis", vmin=0)
            ax.set_yticks(range(len(groups)), groups if col == 0 else [""] * len(groups), fontsize=8)
            ax.set_title(f"{layer.replace('transformer.', '')}\n{title}" if row == 0 else title, fontsize=7)
            ax.tick_params(axis="x", labelsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="share of the genre's assignments")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    base = pick(args, full=[], quick=QUICK, smoke=SMOKE)
    variants = {"shipped": base, "frozen_router": [*base, "steps[1].freeze_router=true"]}
    with tempfile.TemporaryDirectory() as tmp:
        rows = {name: run(overrides, Path(tmp) / name) for name, overrides in variants.items()}
    for name, r in rows.items():
        print(f"{name:14s} top-1 unchanged >= {r['min_top1_agreement']:.3f}, load shift <= {r['max_load_shift']:.3f}")
    summary = {"min_top1_agreement": {k: r["min_top1_agreement"] for k, r in rows.items()},
               "max_load_shift": {k: r["max_load_shift"] for k, r in rows.items()},
               "genre_specialisation": rows["shipped"]["genre_specialisation"],
               "serving_tragedy_after_pretraining": rows["shipped"]["serving_after_pretraining"]["tragedy"],
               "serving_tragedy_after_finetuning": rows["shipped"]["serving_after_finetuning"]["tragedy"]}
    path = write_results("moe", "domains", args=args, results=rows, summary=summary, peers={},
                         extra={"recipe": "moe-charlm-genre"})
    if mode(args) == "full":
        plot(rows, Path(__file__).resolve().parents[2] / "docs" / "moe_domains.png")
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
