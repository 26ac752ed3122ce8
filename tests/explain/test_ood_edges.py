"""OOD edge cases: ViM under a logit shift, one-class relative Mahalanobis, +inf scores in ensembles and guards,
TextFeatures layer indices."""

from __future__ import annotations

import pytest
import torch

from nnforge.errors import ConfigError, DataError
from nnforge.explain import OODGuard, auroc, build_detector, fpr_at_tpr, threshold_at_recall


def _cluster(n: int, seed: int, far: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g) * torch.linspace(2.0, 0.2, 8)  # a principal subspace to leave
    if far:
        x = x + 3.0 * torch.eye(8)[-1]  # along a minor direction
    head = torch.randn(3, 8, generator=torch.Generator().manual_seed(99))
    return x, x @ head.T


@pytest.mark.parametrize("shift", [-10.0, -1.0, 0.0, 5.0])
def test_vim_is_invariant_to_a_constant_logit_shift(shift):
    x, logits = _cluster(300, 0)
    xo, lo = _cluster(100, 1, far=True)
    base = build_detector("vim", dim=4).fit(features=x, logits=logits)
    moved = build_detector("vim", dim=4).fit(features=x, logits=logits + shift)
    assert float(moved._state["alpha"]) > 0
    assert float(moved._state["alpha"]) == pytest.approx(float(base._state["alpha"]))
    a, b = moved.score(features=x, logits=logits + shift), moved.score(features=xo, logits=lo + shift)
    assert auroc(a, b) == pytest.approx(auroc(base.score(features=x, logits=logits),
                                              base.score(features=xo, logits=lo)))
    assert auroc(a, b) > 0.9  # a negative alpha (mean max logit < 0) turned this into ~0


def test_relative_mahalanobis_needs_two_classes():
    x, _ = _cluster(100, 0)
    with pytest.raises(DataError, match="at least 2"):
        build_detector("relative-mahalanobis").fit(features=x, labels=torch.zeros(100, dtype=torch.long))
    build_detector("mahalanobis").fit(features=x, labels=torch.zeros(100, dtype=torch.long))  # one Gaussian: fine


def _tokens(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 30, (n, 6), generator=g)


def test_ensemble_ignores_infinite_holdout_scores():
    tokens, (x, _) = _tokens(60, 0), _cluster(60, 0)
    tokens[::5] = -1  # every fifth text has no tokens: token-ngram scores it +inf
    members = [{"detector": "token-ngram", "params": {"order": 2}}, {"detector": "knn", "params": {"k": 3}}]
    for seed in range(4):  # some seeds put an empty text in the holdout
        det = build_detector("ensemble", members=members, seed=seed).fit(tokens=tokens, features=x)
        assert torch.isfinite(det._state["mean"]).all() and torch.isfinite(det._state["std"]).all()
        s = det.score(tokens=tokens, features=x)
        assert not s.isnan().any()
        assert torch.isinf(s[::5]).all() and torch.isfinite(s[1::5]).all()  # +inf: flagged
    many = tokens.clone()
    many[:50] = -1
    with pytest.raises(DataError, match="fewer than 2 finite scores"):
        build_detector("ensemble", members=members).fit(tokens=many, features=x)


def test_guard_calibrates_with_empty_held_out_texts_and_flags_them():
    det = build_detector("token-ngram", order=2).fit(tokens=_tokens(60, 0))
    val = _tokens(40, 1)
    val[5] = -1
    guard = OODGuard.calibrate(det, tokens=val, recall=0.95)  # "id_scores holds NaN or infinite values" before
    assert torch.isfinite(torch.tensor(guard.threshold))
    assert guard.check(tokens=val).is_ood[5]
    assert threshold_at_recall(torch.tensor([1.0, 2.0, float("inf")]), 0.5, allow_inf=True) == 2.0
    with pytest.raises(DataError, match=r"2 of 3 in-distribution scores are \+inf"):
        threshold_at_recall(torch.tensor([1.0, float("inf"), float("inf")]), 0.95, allow_inf=True)
    with pytest.raises(DataError, match="NaN"):
        threshold_at_recall(torch.tensor([1.0, float("nan")]), 0.5, allow_inf=True)


def test_metrics_rank_plus_infinity_as_most_out_of_distribution():
    inf = float("inf")
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, inf])) == 1.0
    assert fpr_at_tpr(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([inf, 0.5]), tpr=0.6) == 0.5


def test_text_features_checks_layer_indices(minilm):
    from nnforge.explain import TextFeatures

    for layers in [(7,), (-1,), (1, 99)]:
        with pytest.raises(ConfigError, match="not layer indices"):
            TextFeatures(minilm, layers=layers)
    assert TextFeatures(minilm, layers=(0, 6))(["Good morrow."])["layer6"].shape == (1, 384)


def test_text_features_tokens_are_the_words_without_punctuation(minilm):
    from nnforge.explain import TextFeatures

    featurize = TextFeatures(minilm)
    plain, marked = featurize(["my lord the king", "My lord, the king! -- (\"aye\")"])["tokens"]
    words = minilm.tokenizer("my lord the king", add_special_tokens=False)["input_ids"]
    assert plain[plain >= 0].tolist() == words
    assert marked[marked >= 0].tolist()[:4] == words  # the commas, dashes, quotes and brackets are not words
    assert featurize(["?!"])["tokens"].eq(-1).all()  # nothing but punctuation: an empty word sequence


def test_benign_rewrites_skip_what_the_tokenizer_reads_as_the_original(minilm):
    from nnforge.recipes.steps.evaluate import _benign_rewrites

    texts = ["O'er the hill, my lord.", "to be or not to be"]
    out, labels = _benign_rewrites(minilm, texts, [0, 1], ["lowercase", "uppercase", "no-punctuation", "spelling"])
    # uncased MiniLM: lower/upper case read as the original; the second passage has no punctuation to drop
    assert out == ["O'er the hill my lord", "Over the hill, my lord."] and labels == [0, 0]


def test_texts_are_featurized_in_groups_of_similar_length_and_returned_in_order(minilm):
    from nnforge.explain import TextFeatures
    from nnforge.explain.ood_guard import length_groups

    assert length_groups([5, 50, 6, 48, 5], 10) == [[0, 4, 2], [3, 1]]  # 2 pad tokens: within the slack
    assert length_groups([10, 100, 200], 10, slack=0) == [[0], [1], [2]]
    assert length_groups([7] * 5, 2) == [[0, 1], [2, 3], [4]]
    texts = ["Good morrow.", " ".join(["Now is the winter of our discontent"] * 12), "Aye.",
             " ".join(["Friends, Romans, countrymen, lend me your ears"] * 9)]
    grouped = TextFeatures(minilm)(texts)
    single = [TextFeatures(minilm, batch_size=1)([t]) for t in texts]
    for k, v in grouped.items():
        for i, one in enumerate(single):
            got = v[i][v[i] >= 0] if k == "tokens" else v[i]
            want = one[k][0][one[k][0] >= 0] if k == "tokens" else one[k][0]
            assert torch.allclose(got.float(), want.float(), atol=1e-5), (k, i)


def test_text_features_put_every_module_back_in_its_own_mode():
    from _tiny import tiny_text_classifier
    from nnforge.explain import TextFeatures

    model = tiny_text_classifier(3).train()
    model.encoder.eval()  # as a freshly loaded classifier: the encoder in eval mode, the rest training
    before = [mod.training for mod in model.modules()]
    TextFeatures(model)(["to be or not", "to be"])
    assert [mod.training for mod in model.modules()] == before
