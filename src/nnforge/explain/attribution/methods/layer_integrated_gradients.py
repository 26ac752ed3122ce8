"""Layer attribution: integrated gradients to the output of an inner layer (Captum's
``LayerIntegratedGradients``), which says how much each position of that layer's output — a token after
encoder layer k, a region of a convolution's feature map — carried the prediction.

Token layers give one score per token (summed over the hidden width); a convolution's map is summed over its
channels and interpolated to the input's size (as Grad-CAM draws it), so it is drawn over the image.
Defaults: the last encoder layer (text), the last block (char-LM), the last convolution (images).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnforge.errors import ConfigError
from nnforge.explain.attribution._registry import register_method
from nnforge.explain.attribution.methods._common import output_fn, per_unit
from nnforge.explain.attribution.methods.integrated_gradients import completeness


def _layer(subject: Any, name: str | None) -> tuple[str, nn.Module]:
    candidates = list(subject.layers)
    if name is None:
        convs = [n for n, m in subject.layers.items() if isinstance(m, nn.Conv2d)]
        pick = convs[-1] if subject.image_shape is not None and convs else (
            candidates[-1] if subject.family in ("text-classifier", "char-lm") and candidates else None)
        if pick is None:
            raise ConfigError(f"layer attribution of a {subject.family} needs a layer: set layer to a "
                              f"convolution's name ({[n for n in convs] or 'this model has none'})")
        name = pick
    try:
        return name, subject.model.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"layer {name!r} is not a module of this model; layers to attribute to: "
                          f"{candidates}") from None


@register_method("layer_integrated_gradients")
def layer_integrated_gradients(subject: Any, config: Any, target: int) -> tuple[torch.Tensor, dict[str, Any]]:
    from captum.attr import LayerAttribution, LayerIntegratedGradients

    name, layer = _layer(subject, config.layer)
    fwd = output_fn(subject, config)
    attr = LayerIntegratedGradients(fwd, layer).attribute(
        subject.inputs, baselines=subject.baselines, target=target, additional_forward_args=subject.extra or None,
        n_steps=config.n_steps, internal_batch_size=config.internal_batch_size)
    attr = attr[0] if isinstance(attr, tuple) else attr
    error, _ = completeness(subject, config, target, attr, fwd)
    extras = {"layer": name, "layer_shape": list(attr.shape[1:]), "n_steps": config.n_steps,
              "completeness_error": error}
    if attr.ndim == 4:  # (1, C, h, w) feature map
        if subject.image_shape is None:
            raise ConfigError(f"layer {name!r} gives a feature map but the inputs are not images")
        spatial = LayerAttribution.interpolate(attr.detach().sum(1, keepdim=True), subject.image_shape,
                                               interpolate_mode="bilinear")
        return spatial.reshape(-1).float(), extras
    if attr.ndim == 3 and subject.embedding is not None:  # (1, T, H) token states
        return per_unit(attr, subject), extras
    raise ConfigError(f"layer {name!r} output {tuple(attr.shape[1:])} has no position to map back to the input: "
                      f"choose a convolution (images) or a token layer (text)")
