"""Peak memory of serving a saved model variant, measured in a fresh process.

    python -m nnforge.recipes.memory_probe WEIGHTS.safetensors [--batch 32]

Prints JSON: the process's resident memory before loading (``baseline_rss_mb``: Python, torch and
libraries), and its peak after loading the variant and running one forward pass on ``--batch`` texts
(``peak_rss_mb``). Their difference is what the model itself costs: weights plus activations.
A fresh process is the only honest way on CPU: inside a long-lived process the allocator reuses freed
memory and the peak of one call cannot be told apart from what was held before.
"""

from __future__ import annotations

import argparse
import json
import sys


def _rss_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    import torch

    from nnforge.recipes.runs import load_variant

    torch.set_num_threads(1)  # a measurement process: keep it off the other core
    from nnforge.models.checkpoint import read_spec

    if read_spec(args.weights).get("kind") == "text-classifier":
        # libraries count in the baseline, not in the model's cost: import what loading will use
        from transformers import AutoModel, AutoTokenizer, BertModel  # noqa: F401
    baseline = _rss_kb("VmRSS")
    model, _ = load_variant(args.weights)
    texts = ["To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"] * args.batch
    with torch.inference_mode():
        batch = model.tokenize(texts)  # type: ignore[operator]
        model(batch["input_ids"], batch["attention_mask"])
    peak = _rss_kb("VmHWM")
    out = {"baseline_rss_mb": baseline / 1e3 if baseline else None, "peak_rss_mb": peak / 1e3 if peak else None}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
