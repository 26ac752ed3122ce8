"""OOD features of a model on another device than the CPU.

No GPU here: the ``meta`` device stands in for one, under :class:`GpuLikeMeta` (tests/_devices.py).
"""

from __future__ import annotations

from _devices import GpuLikeMeta
from _tiny import tiny_text_classifier
from nnforge.explain.ood_guard import TextFeatures


def test_text_features_of_a_classifier_on_another_device() -> None:
    model = tiny_text_classifier().to("meta")
    with GpuLikeMeta():
        out = TextFeatures(model, layers=(0, 1))(["to be or", "not to be"])
    assert out["features"].shape == (2, 8) and out["logits"].shape == (2, 2) and out["layer0"].shape == (2, 8)
