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


def test_a_classifier_with_a_quantized_head_still_finds_its_device() -> None:
    # a packed QuantizedLinear has no .weight: the device must come from any of the model's tensors
    from nnforge.compress import Int8WeightOnlyConfig, quantize_

    model = tiny_text_classifier()
    quantize_(model, Int8WeightOnlyConfig())
    assert type(model.head).__name__ == "QuantizedLinear"
    assert model.device.type == "cpu" and model.predict_proba(["to be or"]).shape == (1, 2)
    with GpuLikeMeta():
        assert model.to("meta").tokenize(["to be"])["input_ids"].device.type == "meta"
