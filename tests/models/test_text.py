"""TextClassifier: inference helpers run in eval mode whatever the model's mode; max_length is checked."""

from __future__ import annotations

import pytest
import torch

from nnforge.errors import ConfigError
from nnforge.models.text import load_minilm

TEXTS = ["Now is the winter of our discontent", "To be, or not to be"]


def test_predict_proba_and_embed_ignore_dropout_and_restore_the_mode():
    from nnforge.adapt import LoraConfig, apply_lora_

    torch.manual_seed(0)
    model = load_minilm(num_classes=3)
    apply_lora_(model, LoraConfig(r=2, target_modules=("query",), dropout=0.5))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)
    model.train()
    model.encoder.embeddings.eval()  # a mixed state must come back as it was
    flags = {n: m.training for n, m in model.named_modules()}
    torch.testing.assert_close(model.predict_proba(TEXTS), model.predict_proba(TEXTS), rtol=0, atol=0)
    torch.testing.assert_close(model.embed(TEXTS), model.embed(TEXTS), rtol=0, atol=0)
    assert {n: m.training for n, m in model.named_modules()} == flags


@pytest.mark.parametrize("max_length", [0, -5, 513, 1000])
def test_max_length_must_fit_the_encoders_positions(max_length):
    with pytest.raises(ConfigError, match=r"max_length must be an integer in 1\.\.512"):
        load_minilm(num_classes=2, max_length=max_length)


def test_default_max_length_fits_an_encoder_with_few_positions():
    from transformers import BertConfig, BertModel

    from nnforge.models.text import TextClassifier

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32)
    encoder = BertModel(cfg, add_pooling_layer=False)
    assert TextClassifier(encoder, None, num_classes=2).max_length == 32
    with pytest.raises(ConfigError, match=r"1\.\.32"):
        TextClassifier(encoder, None, num_classes=2, max_length=33)
