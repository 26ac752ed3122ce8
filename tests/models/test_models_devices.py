"""Models moved to another device than the CPU: their own helpers must feed them tensors on that device.

No GPU here: the ``meta`` device stands in for one, under :class:`GpuLikeMeta` (tests/_devices.py).
"""

from __future__ import annotations

from _devices import GpuLikeMeta
from _tiny import tiny_text_classifier


def test_text_classifier_on_another_device_tokenizes_onto_it() -> None:
    model = tiny_text_classifier().to("meta")
    texts = ["to be or", "not to be"]
    with GpuLikeMeta():
        assert model.tokenize(texts)["input_ids"].device.type == "meta"
        assert model.predict_proba(texts).shape == (2, 2)
        assert model.embed(texts).shape == (2, 8)
