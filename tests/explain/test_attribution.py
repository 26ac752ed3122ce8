"""Feature attribution: exact on models where the answer is known, complete on real ones, faithful by deletion,
and clear about what it cannot explain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnforge.errors import ConfigError, DataError
from nnforge.explain.attribution import (
    ATTRIBUTION_METHODS,
    AttributionConfig,
    attribute,
    attribution_html,
    deletion_curve,
    explanation_page,
)

pytest.importorskip("captum")


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 3))


def test_every_method_is_registered():
    assert {"integrated_gradients", "gradient_x_input", "occlusion", "layer_integrated_gradients"} <= set(
        ATTRIBUTION_METHODS)


def test_integrated_gradients_of_a_linear_model_is_weight_times_input():
    model = _linear()
    x = torch.randn(4, 6)
    for a, row in zip(attribute(model, x), x, strict=True):
        w = model[0].weight[a.target].detach()
        torch.testing.assert_close(torch.tensor(a.scores), (w * row), rtol=1e-4, atol=1e-5)
        assert a.completeness_error < 1e-4
        assert a.extras["n_steps"] == 64  # complete at the first try: no refinement
    gxi = attribute(model, x, AttributionConfig(method="gradient_x_input"))
    torch.testing.assert_close(torch.tensor(gxi[0].scores), model[0].weight[gxi[0].target].detach() * x[0])


def test_integrated_gradients_refines_its_steps_until_complete_on_a_digits_cnn():
    from tests._tiny import images, small_cnn

    model = small_cnn()
    x, _ = images(3)
    for a in attribute(model, x.reshape(3, 64), AttributionConfig(n_steps=4)):
        assert a.image_shape == (8, 8) and len(a.scores) == 64
        assert a.completeness_error <= 0.01, a.extras
        assert a.extras["n_steps"] > 4  # 4 steps were not enough: doubled until complete
    assert model.training  # the model's mode is restored (explained in eval mode)


def test_occlusion_and_layer_attribution_map_back_to_pixels():
    from tests._tiny import images, small_cnn

    model = small_cnn().eval()
    x, _ = images(2)
    occ = attribute(model, x, AttributionConfig(method="occlusion", window=1))
    # a 1x1 window at baseline 0: a pixel's score is exactly the logit's drop when it alone is set to 0
    a = occ[0]
    j = max(range(64), key=lambda k: abs(a.scores[k]))
    with torch.no_grad():
        z = x[:1].clone().reshape(1, 64)
        base = model(z)[0, a.target]
        z[0, j] = 0
        drop = base - model(z)[0, a.target]
    assert a.scores[j] == pytest.approx(float(drop), rel=1e-4, abs=1e-6)
    layer = attribute(model, x, AttributionConfig(method="layer_integrated_gradients"))
    assert layer[0].extras["layer"] == "features.3" and len(layer[0].scores) == 64
    with pytest.raises(ConfigError, match="not a module"):
        attribute(model, x, AttributionConfig(method="layer_integrated_gradients", layer="nope"))


def test_text_attributions_are_complete_and_skip_special_tokens(minilm):
    texts = ["Now is the winter of our discontent", "O Romeo, wherefore art thou Romeo?"]
    out = attribute(minilm, texts, label_names=["comedy", "tragedy", "history"])
    for a in out:
        assert a.completeness_error <= 0.01
        assert a.units[0] == "[CLS]" and not a.real[0] and a.scores[0] == 0.0
        assert a.target_label in ("comedy", "tragedy", "history")
    assert "winter" in out[0].units
    # occlusion removes a token from the encoder's view: its score is the logit's drop without it
    occ = attribute(minilm, texts[:1], AttributionConfig(method="occlusion"))[0]
    k = occ.units.index("winter")
    b = minilm.tokenize(texts[:1])
    mask = b["attention_mask"].clone()
    from nnforge.models.text import eval_mode

    with torch.no_grad(), eval_mode(minilm):  # no dropout, as attribute() explains it
        full = minilm(b["input_ids"], mask)[0, occ.target]
        mask[0, k] = 0
        drop = full - minilm(b["input_ids"], mask)[0, occ.target]
    assert occ.scores[k] == pytest.approx(float(drop), rel=1e-3, abs=1e-6)


def test_deletion_in_attribution_order_falls_faster_than_random_on_a_linear_model():
    model = _linear(1)
    x = torch.randn(16, 6).abs() + 0.5
    attrs = attribute(model, x)
    ours = deletion_curve(model, x, attrs, steps=6)
    rand = deletion_curve(model, x, attrs, order="random", repeats=4, steps=6)
    assert ours.fractions[0] == 0 and ours.fractions[-1] == 1
    assert ours.probabilities[0][0] == pytest.approx(attrs[0].probabilities[attrs[0].target], abs=1e-5)
    assert ours.auc < rand.auc
    with pytest.raises(DataError, match="attributions"):
        deletion_curve(model, x, attrs[:3])


def test_char_lm_explains_the_next_character():
    from nnforge.models import build

    torch.manual_seed(0)
    model = build("char-gpt", vocab_size=12, block_size=16, n_layer=1, n_head=2, n_embd=16)
    vocab = "abcdefghij. "
    ids = torch.randint(0, 12, (2, 10))
    out = attribute(model, ids, vocab=vocab)
    assert out[0].units == [vocab[i] for i in ids[0].tolist()]
    assert all(a.completeness_error <= 0.01 for a in out)
    assert out[0].target_label == vocab[out[0].target]
    with pytest.raises(DataError, match="character ids"):
        attribute(model, torch.full((1, 4), 40))


def test_quantized_models_are_explained_through_their_float_activation_twin():
    from nnforge.compress import W8A8Config, quantize_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    x = torch.randn(8, 32)
    quantize_(model, W8A8Config(activations="dynamic"), calibration=[x], forward=lambda m, b: m(b))
    a = attribute(model, x[:2])[0]
    assert a.completeness_error <= 0.01
    twin = a.extras["float_activation_twin"]
    assert twin["layers"] == 2 and twin["max_probability_diff"] < 0.05
    assert model[0].act_quant == "dynamic"  # restored after the explanation
    raw = attribute(model, x[:2], AttributionConfig(activations="as-deployed", max_steps=64))[0]
    assert "float_activation_twin" not in raw.extras


def test_bad_requests_are_named():
    model = _linear()
    with pytest.raises(ConfigError, match="did you mean 'occlusion'"):
        AttributionConfig(method="oclusion")
    with pytest.raises(ConfigError, match="target 7"):
        attribute(model, torch.randn(1, 6), AttributionConfig(target=7))
    with pytest.raises(DataError, match="float tensor"):
        attribute(model, torch.ones(2, 6, dtype=torch.long))


def test_html_escapes_what_it_shows(minilm):
    a = attribute(minilm, ["<script>alert(1)</script> my lord"], AttributionConfig(method="gradient_x_input"))[0]
    page = explanation_page(a, typicality={"score": 2.0, "threshold": 1.0, "in_range": False, "detector": "knn"},
                            neighbours=[{"kind": "nearest", "text": "<b>x</b>", "label": "comedy", "score": 0.9}])
    assert "<script>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "unlike the data the model was built for" in page
    assert "<svg" not in attribution_html(a)


def test_benign_shifts_keep_the_words():
    from nnforge.explain.benign import BENIGN_SHIFTS, shift_texts

    text = "Call'd thee, o'er the hill,\nMy lord! 'Tis lov'd"
    assert shift_texts([text], "spelling") == ["Called thee, over the hill,\nMy lord! It is loved"]
    assert shift_texts([text], "line-breaks") == ["Call'd thee, o'er the hill, My lord! 'Tis lov'd"]
    assert shift_texts([text], "no-punctuation") == ["Call'd thee o'er the hill\nMy lord 'Tis lov'd"]
    assert {"lowercase", "uppercase"} <= set(BENIGN_SHIFTS)
    with pytest.raises(ConfigError, match="benign shift"):
        shift_texts([text], "leetspeak")
