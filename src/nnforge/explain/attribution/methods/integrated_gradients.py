"""Integrated gradients (Sundararajan et al. 2017) with Captum, refined until it is complete.

The attributions of one input sum to f(x) − f(baseline) up to the integral's numerical error. The steps are
doubled from ``n_steps`` until that error, relative to |f(x) − f(baseline)|, is at most ``tolerance`` (or
``max_steps`` is reached); the error reached and the steps used come back with the scores, so a reader knows
how far to trust the sum. Token ids are attributed through the embedding layer (Captum's
``LayerIntegratedGradients``): the path runs from the baseline's embeddings to the input's.
"""

from __future__ import annotations

from typing import Any

import torch

from nnforge.explain.attribution._registry import register_method
from nnforge.explain.attribution.methods._common import output_fn, per_unit


def completeness(subject: Any, config: Any, target: int, attr: torch.Tensor, fwd: Any) -> tuple[float, float]:
    """(relative completeness error, f(x) − f(baseline)) of attributions summed over every input element."""
    with torch.no_grad():
        gap = float(fwd(subject.inputs, *subject.extra)[0, target] - fwd(subject.baselines, *subject.extra)[0, target])
    total = float(attr.detach().double().sum())
    return abs(total - gap) / max(abs(gap), 1e-12), gap


@register_method("integrated_gradients")
def integrated_gradients(subject: Any, config: Any, target: int) -> tuple[torch.Tensor, dict[str, Any]]:
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    fwd = output_fn(subject, config)
    algo = IntegratedGradients(fwd) if subject.embedding is None else LayerIntegratedGradients(fwd, subject.embedding)
    steps = config.n_steps
    while True:
        attr = algo.attribute(subject.inputs, baselines=subject.baselines, target=target,
                              additional_forward_args=subject.extra or None, n_steps=steps,
                              internal_batch_size=config.internal_batch_size)
        attr = attr[0] if isinstance(attr, tuple) else attr
        error, gap = completeness(subject, config, target, attr, fwd)
        if error <= config.tolerance or steps * 2 > config.max_steps:
            break
        steps *= 2
    return per_unit(attr, subject), {"n_steps": steps, "completeness_error": error, "output_gap": gap,
                                     "integration": "gausslegendre"}
