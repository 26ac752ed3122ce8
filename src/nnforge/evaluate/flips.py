"""Compression flip analysis: which examples change their prediction between a model and its compressed
version, and where they concentrate.

Average accuracy can hide what compression does: a quantized model may trade a few right answers for a
few others and keep the same average, while one rare slice loses most of its right answers. The analysis
counts flips per slice, separates the ones that broke a right answer from the ones that fixed a wrong one,
and lists examples, so a reviewer sees *which* inputs moved.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nnforge.evaluate.outputs import Outputs, check_paired
from nnforge.evaluate.slices import Slice

__all__ = ["flip_analysis"]


def flip_analysis(variant: Outputs, reference: Outputs, slices: dict[str, Slice], *, examples: int = 10,
                  reference_name: str = "reference") -> dict[str, Any]:
    """Flips of ``variant`` against ``reference`` overall and per slice, with up to ``examples`` changed inputs.

    Returns ``n``, ``flips``, ``flip_rate``, ``broken`` (reference right, variant wrong), ``fixed`` (the
    reverse), ``per_slice`` rows (``slice, n, rare, flips, flip_rate, broken, fixed``), ``worst_slice``
    (highest flip rate among slices with at least one flip; rare slices included and marked) and ``examples``.
    """
    check_paired(variant, reference, "flip analysis")
    flipped = variant.preds != reference.preds
    broken = flipped & (reference.preds == reference.labels)
    fixed = flipped & (variant.preds == variant.labels)
    rows: list[dict[str, Any]] = []
    for s in slices.values():
        i = s.index
        n = len(i)
        rows.append({"slice": s.name, "n": n, "rare": s.rare, "flips": int(flipped[i].sum()),
                     "flip_rate": float(flipped[i].mean()) if n else None, "broken": int(broken[i].sum()),
                     "fixed": int(fixed[i].sum())})
    candidates = [r for r in rows if r["slice"] != "all" and r["flips"]]
    worst = max(candidates, key=lambda r: float(r["flip_rate"])) if candidates else None
    names = variant.label_names or [str(c) for c in range(variant.num_classes)]
    shown = []
    for k in np.flatnonzero(flipped)[:examples]:
        shown.append({"index": int(k), "text": (variant.texts or reference.texts or [""] * len(variant))[k][:200],
                      "label": names[variant.labels[k]], reference_name: names[reference.preds[k]],
                      "reference": names[reference.preds[k]], "variant": names[variant.preds[k]]})
    n = len(variant)
    return {"reference": reference_name, "n": n, "flips": int(flipped.sum()),
            "flip_rate": float(flipped.mean()) if n else 0.0, "broken": int(broken.sum()), "fixed": int(fixed.sum()),
            "per_slice": rows, "worst_slice": f"{worst['slice']} ({worst['flip_rate']:.3f})" if worst else None,
            "examples": shown}
