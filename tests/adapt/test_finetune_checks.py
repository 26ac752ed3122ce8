"""finetune_classifier refuses inputs it would silently mishandle (checked before any training step)."""

from __future__ import annotations

import pytest

from nnforge.adapt import FinetuneConfig, LoraConfig, apply_lora_, finetune_classifier
from nnforge.errors import ConfigError, DataError
from nnforge.models.text import load_minilm

TEXTS = ["love and a wedding feast", "murder most foul and blood", "the king and his crown"] * 2
LABELS = [0, 1, 2] * 2
CFG = FinetuneConfig(epochs=1, batch_size=6, wise_alphas=())


@pytest.fixture(scope="module")
def adapted():
    model = load_minilm(num_classes=3, max_length=16)
    apply_lora_(model, LoraConfig(r=2, target_modules=("query",), layers=(1, 4, 5)))
    return model


def test_frozen_layers_above_an_adapter_are_refused(adapted):
    with pytest.raises(ConfigError, match=r"frozen_layers=3 .*encoder\.layer\.1\.attention\.self\.query\.lora_A"):
        finetune_classifier(adapted, TEXTS, LABELS, [], [], CFG, frozen_layers=3)
    with pytest.raises(ConfigError, match=r"frozen_layers must be an integer in 0\.\.6"):
        finetune_classifier(adapted, TEXTS, LABELS, [], [], CFG, frozen_layers=7)


@pytest.mark.parametrize("val_texts, val_labels, match", [
    (TEXTS, [0], "one label per text"), (TEXTS[:2], [0, 1, 2], "one label per text"),
    (TEXTS[:2], [0, 3], r"validation labels must be in \[0, 3\)"), ([], [1], "one label per text")])
def test_validation_labels_must_match_their_texts(adapted, val_texts, val_labels, match):
    with pytest.raises(DataError, match=match):
        finetune_classifier(adapted, TEXTS, LABELS, val_texts, val_labels, CFG)


@pytest.mark.parametrize("labels, kw, match", [
    ([1] * 6, {}, "at least two classes"), ([0, 1, 4, 0, 1, 2], {"num_classes": 3}, r"must be in \[0, 3\)"),
    ([0, 1, -1, 0, 1, 2], {}, r"must be in \[0"), ([0, 1, 2], {}, "one integer per feature row")])
def test_linear_probe_refuses_labels_it_cannot_fit(labels, kw, match):
    import torch

    from nnforge.adapt.probe import fit_linear_probe

    with pytest.raises(DataError, match=match):
        fit_linear_probe(torch.randn(6, 4), labels, **kw)
    with pytest.raises(DataError, match="validation labels"):
        fit_linear_probe(torch.randn(6, 4), [0, 1, 2] * 2, torch.randn(3, 4), [0, 1], num_classes=3)
