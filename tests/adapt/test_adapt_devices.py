"""Fine-tuning a classifier that lives on another device than the CPU.

No GPU here: the ``meta`` device stands in for one, under :class:`GpuLikeMeta` (tests/_devices.py), which
refuses a non-scalar CPU tensor among device operands as CUDA does. Its values are placeholders, so these
tests check that every step runs where the model is, not what it learns (tests/adapt/test_finetune.py does).
"""

from __future__ import annotations

from _devices import GpuLikeMeta
from _tiny import tiny_text_classifier
from nnforge.adapt import FinetuneConfig, finetune_classifier
from nnforge.adapt.finetune import predict_labels

TEXTS = ["to be or not", "a rose by any other name", "all the world", "now is the winter of our"] * 2
LABELS = [0, 1, 0, 1] * 2


def test_finetune_runs_where_the_model_is() -> None:
    model = tiny_text_classifier().to("meta")
    config = FinetuneConfig(epochs=2, batch_size=4, patience=5)
    with GpuLikeMeta():
        result = finetune_classifier(model, TEXTS, LABELS, TEXTS[:4], LABELS[:4], config)
        preds = predict_labels(model, TEXTS)
    assert result.steps == 4 and len(result.history) == 3
    assert preds.device.type == "cpu" and preds.shape == (8,)
    assert all(p.device.type == "meta" for p in model.parameters())
