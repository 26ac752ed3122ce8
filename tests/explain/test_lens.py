"""The logit lens and the tuned lens on a tiny char-GPT trained on a permutation: next = perm[current]."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from nnforge.errors import DataError, ModelError
from nnforge.explain.lens import (
    TunedLens,
    TunedLensConfig,
    lens_logits,
    lens_predictions,
    lens_report,
    residual_stream,
    train_tuned_lens,
)
from nnforge.models import build

VOCAB = "abcdefghijklmnop"


def encode(text: str) -> torch.Tensor:
    return torch.tensor([VOCAB.index(c) for c in text])


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def permutation_batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Chains x, perm[x], perm[perm[x]], … of a fixed permutation: the current token gives the next one."""
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        chain = [torch.randint(0, 16, (8,), generator=g)]
        for _ in range(16):
            chain.append(perm[chain[-1]])
        seq = torch.stack(chain, 1)  # (8, 17)
        out.append((seq[:, :-1], seq[:, 1:]))
    return out


@pytest.fixture(scope="module")
def trained():
    """A 3-block, 32-wide char-GPT that has learned the permutation (about a second on one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build("char-gpt", n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for x, y in permutation_batches(120, seed=1):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    yield model.eval()
    torch.set_num_threads(before)


def test_the_logit_lens_at_the_last_layer_is_the_model_itself(trained):
    x, _ = permutation_batches(1, seed=5)[0]
    stream, logits = residual_stream(trained, x)
    assert len(stream) == 4 and stream[0].shape == (8, 16, 32)
    lensed = lens_logits(trained, stream)
    assert torch.allclose(lensed[-1], trained(x)[0], atol=1e-5) and torch.allclose(lensed[-1], logits, atol=1e-6)
    untrained = TunedLens.for_model(trained)  # zero translators: the tuned lens starts as the logit lens
    assert all(torch.allclose(a, b) for a, b in zip(lens_logits(trained, stream, untrained), lensed, strict=True))


def test_the_tuned_lens_beats_the_logit_lens_at_early_layers(trained):
    params = {k: v.clone() for k, v in trained.state_dict().items()}
    tuned = train_tuned_lens(trained, permutation_batches(20, seed=2), TunedLensConfig(steps=60, lr=1e-2))
    assert all(torch.equal(v, params[k]) for k, v in trained.state_dict().items())  # the model is not trained
    assert all(p.grad is None for p in trained.parameters())
    report = lens_report(trained, permutation_batches(4, seed=3), tuned)
    assert report.model_loss < 0.3 and report.tokens == 4 * 8 * 16
    first = report.layers[0]
    # the embeddings, read by the tied head, predict the current character; a translator learns the permutation
    assert first.tuned_lens_loss is not None and first.tuned_lens_kl is not None
    assert first.tuned_lens_loss < 0.5 * first.logit_lens_loss
    assert first.tuned_lens_kl < first.logit_lens_kl
    last = report.layers[-1]
    assert last.logit_lens_kl == pytest.approx(0.0, abs=1e-5) and last.logit_lens_agreement == 1.0
    assert last.tuned_lens_loss == pytest.approx(last.logit_lens_loss)
    assert last.logit_lens_loss == pytest.approx(report.model_loss, rel=1e-5)
    json.dumps(report.to_dict())


def test_per_layer_next_character_predictions(trained):
    text = decode(permutation_batches(1, seed=4)[0][0][0, :10].tolist())
    preds = lens_predictions(trained, text, encode=encode, decode=decode, top_k=3)
    assert preds.lens == "logit" and len(preds.top) == 4 and all(len(layer) == len(text) for layer in preds.top)
    for layer in preds.top:
        for guesses in layer:
            probs = [p for _, p in guesses]
            assert len(guesses) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    with torch.no_grad():
        logits = trained(encode(text)[None])[0][0]  # (T, V)
    own = [decode([int(i)]) for i in logits.argmax(-1)]
    assert [pos[0][0] for pos in preds.top[-1]] == own
    assert preds.top[-1][-1][0][1] == pytest.approx(float(F.softmax(logits[-1], -1).max()), rel=1e-5)
    assert len(preds.table().splitlines()) == 4 and preds.table().startswith("layer 0: ")
    json.dumps(preds.to_dict())


def test_tuned_lens_save_load_round_trip(trained, tmp_path):
    lens = TunedLens.for_model(trained, TunedLensConfig(steps=5))
    with torch.no_grad():
        lens.translators[1].weight.normal_()
    path = lens.save(tmp_path / "lens.safetensors")
    loaded = TunedLens.load(path)
    assert loaded.config == lens.config and (loaded.n_layer, loaded.width) == (3, 32)
    h = torch.randn(2, 5, 32)
    assert torch.equal(loaded(h, 1), lens(h, 1).detach())


def test_clear_errors(trained):
    with pytest.raises(ModelError, match="char-GPT's layout"):
        residual_stream(torch.nn.Linear(3, 3), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(DataError, match="no batches"):
        lens_report(trained, [])
    with pytest.raises(DataError, match=r"\(batch, tokens\)"):
        residual_stream(trained, torch.zeros(3))
    with pytest.raises(ModelError, match="layers"):
        lens_logits(trained, residual_stream(trained, torch.zeros(1, 4, dtype=torch.long))[0], TunedLens(2, 32))
    with pytest.raises(ModelError, match="block_size"):
        lens_predictions(trained, "a" * 20, encode=encode, decode=decode)
    with pytest.raises(DataError, match="at least one batch"):
        train_tuned_lens(trained, [])
