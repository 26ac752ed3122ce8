"""Occlusion (Zeiler & Fergus 2014) with Captum: how much the output drops when a part of the input is gone.

- images: a ``window`` × ``window`` patch set to the baseline (0), slid with stride 1; a pixel's score is the
  mean drop of the patches covering it;
- text classifiers: each token removed (its attention-mask entry set to 0, so the encoder no longer sees it
  and the mean pooling skips it) — a true deletion, not a replacement by another token;
- char-LMs: each character replaced by a space; other tensors: each feature set to 0.
"""

from __future__ import annotations

from typing import Any

import torch

from nnforge.explain.attribution._registry import register_method
from nnforge.explain.attribution.methods._common import output_fn, per_unit


@register_method("occlusion")
def occlusion(subject: Any, config: Any, target: int) -> tuple[torch.Tensor, dict[str, Any]]:
    from captum.attr import FeatureAblation, Occlusion

    fwd = output_fn(subject, config)
    if subject.family == "text-classifier":
        (mask,) = subject.extra
        ids = subject.inputs

        def without(mask_f: torch.Tensor) -> torch.Tensor:
            # back to an integer mask: Hugging Face encoders read a float mask as additive, which masks nothing
            return fwd(ids.expand(mask_f.shape[0], -1), mask_f.round().to(mask.dtype))

        attr = FeatureAblation(without).attribute(mask.float(), baselines=0.0, target=target)
        return attr[0].float() * subject.real[0].float(), {"removal": "attention mask"}
    if subject.image_shape is not None:
        w = min(config.window, *subject.image_shape)
        attr = Occlusion(fwd).attribute(subject.inputs, sliding_window_shapes=(1, w, w), strides=(1, 1, 1),
                                        baselines=0.0, target=target)
        return per_unit(attr, subject), {"window": w, "stride": 1, "baseline": 0.0}
    if subject.family == "char-lm":
        mask = torch.arange(subject.inputs.shape[1]).unsqueeze(0)
        attr = FeatureAblation(fwd).attribute(subject.inputs, baselines=subject.baselines, target=target,
                                              feature_mask=mask)
        return attr[0].float(), {"replacement": "space"}
    attr = FeatureAblation(fwd).attribute(subject.inputs, baselines=0.0, target=target)
    return per_unit(attr, subject), {"baseline": 0.0}
