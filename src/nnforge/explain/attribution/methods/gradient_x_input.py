"""Gradient × input (Shrikumar et al. 2016) with Captum: one backward pass, the first-order term of the
output's change; token ids are attributed at the embedding layer's output."""

from __future__ import annotations

from typing import Any

import torch

from nnforge.explain.attribution._registry import register_method
from nnforge.explain.attribution.methods._common import output_fn, per_unit


@register_method("gradient_x_input")
def gradient_x_input(subject: Any, config: Any, target: int) -> tuple[torch.Tensor, dict[str, Any]]:
    from captum.attr import InputXGradient, LayerGradientXActivation

    fwd = output_fn(subject, config)
    if subject.embedding is None:
        attr = InputXGradient(fwd).attribute(subject.inputs.clone().requires_grad_(True), target=target)
    else:
        attr = LayerGradientXActivation(fwd, subject.embedding).attribute(
            subject.inputs, target=target, additional_forward_args=subject.extra or None)
    return per_unit(attr, subject), {}
