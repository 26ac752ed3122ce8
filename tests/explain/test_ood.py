"""OOD detectors, metrics and the guard on synthetic Gaussian data (seeded, CPU, seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from nnforge.errors import ConfigError, DataError, IntegrityError, ModelError
from nnforge.explain import (
    OOD_DETECTORS,
    OODGuard,
    TextFeatures,
    auroc,
    build_detector,
    fpr_at_tpr,
    threshold_at_recall,
)

D, C = 16, 3


def _tokens(n: int, g: torch.Generator, step: int) -> torch.Tensor:
    """Sequences of 6-12 ids in [0, 20) that mostly advance by ``step``, padded with -1: same unigrams, other bigrams."""
    out = torch.empty(n, 12, dtype=torch.long)
    out[:, 0] = torch.randint(0, 20, (n,), generator=g)
    jumps, fresh = torch.rand(n, 12, generator=g) < 0.2, torch.randint(0, 20, (n, 12), generator=g)
    for j in range(1, 12):
        out[:, j] = torch.where(jumps[:, j], fresh[:, j], (out[:, j - 1] + step) % 20)
    lengths = torch.randint(6, 13, (n, 1), generator=g)
    return out.masked_fill(torch.arange(12) >= lengths, -1)


def _make(n: int, seed: int, ood: bool = False) -> dict[str, torch.Tensor]:
    """ID: three classes around orthogonal means, logits from a linear head, token sequences stepping by 1;
    OOD: a shifted cluster, and sequences stepping by 3."""
    g = torch.Generator().manual_seed(seed)
    means = 4.0 * torch.eye(D)[:C]  # (C, D)
    labels = torch.randint(0, C, (n,), generator=g)
    noise = torch.randn(n, D, generator=g)
    if ood:  # away from every class, in directions the classes do not use
        x = noise + 4.0 * torch.eye(D)[C : C + 2].sum(0)
    else:
        x = noise + means[labels]
    logits = x @ means.T / 2  # (n, C)
    return {"features": x, "logits": logits, "labels": labels, "tokens": _tokens(n, g, 3 if ood else 1),
            "shallow": x[:, C:] + torch.randn(n, D - C, generator=g)}  # a second, noisier view for ensembles


ENSEMBLE = {"members": [{"detector": "token-ngram", "params": {"order": 2}},
                        {"detector": "mahalanobis", "params": {"class_conditional": False}, "inputs": {"features": "shallow"}},
                        {"detector": "knn"}]}
PARAMS = {"ensemble": ENSEMBLE, "token-ngram": {"order": 2}}


TRAIN, VAL, TEST, OOD = _make(600, 0), _make(2000, 1), _make(2000, 2), _make(400, 3, ood=True)


def _fitted(name: str):
    return build_detector(name, **PARAMS.get(name, {})).fit(**TRAIN)


def _inputs(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in data.items() if k != "labels"}


# --- metrics -----------------------------------------------------------------------------------------


def test_auroc_equals_pairwise_count_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (50,), generator=g).float()
    b = torch.randint(2, 8, (40,), generator=g).float()
    pairs = (b[None, :] > a[:, None]).float() + 0.5 * (b[None, :] == a[:, None]).float()
    assert auroc(a, b) == pytest.approx(float(pairs.double().mean()), abs=1e-12)
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and auroc([2.0, 3.0], [0.0, 1.0]) == 0.0


def test_fpr_at_tpr_counts_ood_accepted_at_95_percent_id_recall():
    id_scores = torch.arange(100).float()  # threshold keeps 95 of them: score <= 94
    assert threshold_at_recall(id_scores, 0.95) == 94.0
    ood = torch.tensor([10.0, 94.0, 95.0, 200.0])
    assert fpr_at_tpr(id_scores, ood) == 0.5
    with pytest.raises(DataError):
        fpr_at_tpr(id_scores, [])


# --- detectors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OOD_DETECTORS.names())
def test_detector_separates_a_shifted_cluster(name):
    det = _fitted(name)
    id_scores, ood_scores = det.score(**_inputs(TEST)), det.score(**_inputs(OOD))
    assert id_scores.shape == (2000,) and id_scores.dtype == torch.float32
    assert auroc(id_scores, ood_scores) > 0.9, name


@pytest.mark.parametrize("name", OOD_DETECTORS.names())
def test_threshold_keeps_95_percent_of_held_out_in_distribution(name):
    guard = OODGuard.calibrate(_fitted(name), **_inputs(VAL), recall=0.95)
    val_accepted = int((~guard.check(**_inputs(VAL)).is_ood).sum())
    test_accepted = int((~guard.check(**_inputs(TEST)).is_ood).sum())
    assert 1900 <= val_accepted <= 1902  # 95% of 2000, up to ties
    assert abs(test_accepted / 2000 - 0.95) < 0.02, (name, test_accepted)


@pytest.mark.parametrize("name", OOD_DETECTORS.names())
def test_guard_save_load_round_trip_gives_identical_scores(name, tmp_path):
    guard = OODGuard.calibrate(_fitted(name), **_inputs(VAL), metadata={"note": "synthetic"})
    before = guard.check(**_inputs(OOD))
    guard.save(tmp_path / "guard")
    loaded = OODGuard.load(tmp_path / "guard")
    after = loaded.check(**_inputs(OOD))
    assert torch.equal(before.scores, after.scores) and torch.equal(before.is_ood, after.is_ood)
    assert loaded.threshold == guard.threshold and loaded.metadata["note"] == "synthetic"
    assert sorted(p.name for p in (tmp_path / "guard").iterdir()) == ["detector.safetensors", "guard.json"]


def test_tampered_guard_weights_are_refused(tmp_path):
    _fitted_guard = OODGuard.calibrate(_fitted("knn"), **_inputs(VAL))
    folder = _fitted_guard.save(tmp_path / "g")
    doc = json.loads((folder / "guard.json").read_text())
    doc["weights_sha256"] = "0" * 64
    (folder / "guard.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="sha256"):
        OODGuard.load(folder)


def test_unfitted_detector_and_wrong_inputs_raise_clear_errors():
    with pytest.raises(ModelError, match="not fitted"):
        build_detector("mahalanobis").score(features=TEST["features"])
    det = _fitted("knn")
    with pytest.raises(DataError, match="16"):
        det.score(features=torch.randn(5, D + 1))
    with pytest.raises(DataError, match="2-D"):
        det.score(features=torch.randn(D))
    with pytest.raises(DataError, match="logits"):
        build_detector("energy").fit(features=TRAIN["features"])
    with pytest.raises(DataError, match="labels"):
        build_detector("relative-mahalanobis").fit(features=TRAIN["features"])
    with pytest.raises(DataError, match="labels"):
        build_detector("mahalanobis").fit(features=TRAIN["features"], labels=TRAIN["labels"][:10])
    with pytest.raises(DataError, match="NaN"):
        build_detector("knn").fit(features=torch.full((20, 3), float("nan")))
    with pytest.raises(ConfigError, match="did you mean 'knn'"):
        build_detector("kn")
    with pytest.raises(ConfigError, match="k"):
        build_detector("knn", k=0)
    with pytest.raises(ModelError, match="featurizer"):
        OODGuard.calibrate(det, features=VAL["features"])(["text"])


def test_token_ngram_counts_pairs_and_handles_unseen_ids():
    unigram = build_detector("token-ngram", order=1).fit(tokens=TRAIN["tokens"])
    bigram = _fitted("token-ngram")
    assert auroc(unigram.score(tokens=TEST["tokens"]), unigram.score(tokens=OOD["tokens"])) < 0.7  # same unigrams
    assert auroc(bigram.score(tokens=TEST["tokens"]), bigram.score(tokens=OOD["tokens"])) > 0.95
    unseen = torch.tensor([[0, 1, 2, 3], [500, 501, 502, -1], [-1, -1, -1, -1]])
    s = bigram.score(tokens=unseen)
    assert s[1] > s[0] and torch.isfinite(s[:2]).all()
    assert s[2] == float("inf")  # no tokens, no evidence: flagged by any guard (it scored 0.0, the most typical)
    assert OODGuard(bigram, float(s[0]) + 1.0).check(tokens=unseen).is_ood.tolist() == [False, True, True]
    with pytest.raises(DataError, match="integer"):
        bigram.score(tokens=torch.zeros(2, 3))


def test_ensemble_standardises_members_on_held_out_training_rows():
    det = _fitted("ensemble")
    z = det.member_scores(**_inputs(TEST))
    assert list(z) == ["0:token-ngram", "1:mahalanobis", "2:knn"]
    for v in z.values():  # in-distribution scores come out near mean 0, spread 1
        assert abs(float(v.mean())) < 0.3 and 0.6 < float(v.std()) < 1.5
    assert torch.allclose(det.score(**_inputs(TEST)).double(), torch.stack(list(z.values())).mean(0), atol=1e-5)
    with pytest.raises(DataError, match="shallow"):
        det.score(features=TEST["features"], tokens=TEST["tokens"])
    with pytest.raises(ConfigError, match="nest"):
        build_detector("ensemble", members=[{"detector": "ensemble"}])


def test_single_gaussian_mahalanobis_needs_no_labels():
    det = build_detector("mahalanobis", class_conditional=False).fit(features=TRAIN["features"])
    assert auroc(det.score(features=TEST["features"]), det.score(features=OOD["features"])) > 0.9


@pytest.mark.slow
def test_text_guard_flags_code_among_prose(minilm, tmp_path):
    prose = ["The king is dead and the crown passes to his son.", "She walked along the river at dawn.",
             "Love is not love which alters when it alteration finds.", "The weather was cold and grey all day.",
             "He wrote a long letter to his brother in the city.", "They sang old songs by the fire at night.",
             "A storm broke over the hills before the harvest.", "My lord, the messenger has come from France."]
    code = ["def f(x):\n    return x ** 2 + 1", "for i in range(10): print(i, file=sys.stderr)"]
    featurize = TextFeatures(minilm)
    inputs = featurize(prose[:6])
    detector = build_detector("knn", k=2).fit(features=inputs["features"])
    guard = OODGuard.calibrate(detector, features=featurize(prose[6:])["features"], featurizer=featurize)
    result = guard(prose[6:] + code)
    assert result.is_ood.tolist() == [False, False, True, True]
    assert result.to_list()[2]["ood"] is True
    guard.save(tmp_path / "text-guard")
    assert torch.equal(OODGuard.load(tmp_path / "text-guard", featurizer=featurize)(code).scores,
                       guard(code).scores)


def _resign(folder):
    """Record the weights' current sha256 in guard.json (what a careful forger would do)."""
    from nnforge.ledger import file_sha256

    doc = json.loads((folder / "guard.json").read_text())
    doc["weights_sha256"] = file_sha256(folder / "detector.safetensors")
    (folder / "guard.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(("edit", "error", "message"), [
    (lambda f, d: (f / "guard.json").unlink(), DataError, "not a saved OODGuard"),
    (lambda f, d: (f / "guard.json").write_text("{not json"), IntegrityError, "not valid JSON"),
    (lambda f, d: (f / "guard.json").write_text(json.dumps({**d, "format": "other"})), DataError, "not an OODGuard file"),
    (lambda f, d: (f / "guard.json").write_text(json.dumps({k: v for k, v in d.items() if k != "threshold"})),
     DataError, "threshold"),
    (lambda f, d: (f / "guard.json").write_text(json.dumps({**d, "recall": 7})), DataError, "recall"),
    (lambda f, d: (f / "guard.json").write_text(json.dumps({**d, "metadata": "x"})), DataError, "metadata"),
    (lambda f, d: (f / "guard.json").write_text(json.dumps({**d, "params": {"k": "many"}})), DataError, "does not load"),
    (lambda f, d: (f / "guard.json").write_text(json.dumps({**d, "detector": "nosuch"})), Exception, "nosuch"),
    (lambda f, d: (f / "guard.json").write_text(json.dumps({**d, "dims": {"features": 99}})), DataError, "does not load"),
])
def test_malformed_guard_files_are_refused_with_the_file_named(tmp_path, edit, error, message):
    folder = OODGuard.calibrate(_fitted("knn"), **_inputs(VAL)).save(tmp_path / "g")
    edit(folder, json.loads((folder / "guard.json").read_text()))
    with pytest.raises(error, match=message) as info:
        OODGuard.load(folder)
    assert isinstance(info.value, (DataError, IntegrityError, ConfigError))


def test_weights_that_do_not_fit_the_detector_are_refused(tmp_path):
    from safetensors.torch import save_file

    folder = OODGuard.calibrate(_fitted("mahalanobis"), **_inputs(VAL)).save(tmp_path / "g")
    save_file({"unrelated": torch.zeros(3)}, str(folder / "detector.safetensors"))
    _resign(folder)
    with pytest.raises(DataError, match="does not load"):
        OODGuard.load(folder)


@pytest.mark.parametrize(("threshold", "recall", "message"), [
    (float("inf"), 0.95, "finite"), (float("nan"), 0.95, "finite"), (1.0, 5.0, r"recall must be in \(0, 1\]"),
    (1.0, 0.0, "recall"),
])
def test_a_guard_needs_a_finite_threshold_and_a_recall_in_range(threshold, recall, message):
    det = build_detector("mahalanobis").fit(**TRAIN)
    with pytest.raises(DataError, match=message):
        OODGuard(det, threshold, recall=recall)
