"""Sparse autoencoders: TopK sparsity, dictionary recovery, splicing, alive counting, files, sites and errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nnforge.errors import ConfigError, DataError, IntegrityError, ModelError
from nnforge.explain.sae import (
    SAE,
    SAE_ARCHITECTURES,
    SAEConfig,
    collect_activations,
    evaluate_sae,
    reconstruction_error,
    replace_activations,
    residual_site,
    resolve_site,
    train_sae,
)
from nnforge.models import build


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny matrices: a second thread only waits on a busy machine."""


def sparse_signal(n: int, d: int = 64, atoms: int = 128, active: int = 3, seed: int = 0):
    """``n`` sums of ``active`` random unit atoms (of ``atoms``) with coefficients in [0.5, 2.5], and the atoms."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    which = torch.rand(n, atoms, generator=g).argsort(-1)[:, :active]
    codes = torch.zeros(n, atoms).scatter(-1, which, torch.rand(n, active, generator=g) * 2 + 0.5)
    return codes @ dictionary, dictionary


def identity_sae(d: int) -> SAE:
    """A ReLU SAE that reconstructs exactly: latents d+i and i carry the negative and positive part of x_i."""
    sae = SAE(SAEConfig(architecture="relu-l1", d_in=d, expansion=2))
    with torch.no_grad():
        eye = torch.eye(d)
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def char_batches(n: int, vocab: int = 16, block: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, vocab, (4, block + 1), generator=g)
        out.append((x[:, :-1], x[:, 1:]))
    return out


def tiny_gpt(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build("char-gpt", n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=16).eval()


class _Argmax(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.argmax(-1)


class ToyLM(nn.Module):
    """Embedding → linear head: the embedding's output is the site whose activations the tests control."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.emb = nn.Embedding.from_pretrained(weight, freeze=False)
        self.head = nn.Linear(weight.shape[1], weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x))


# --- the SAE itself -------------------------------------------------------------------------------------------

def test_topk_keeps_exactly_k_latents_when_k_are_positive_and_never_more():
    sae = SAE(SAEConfig(d_in=16, expansion=4, k=5))
    x = torch.randn(200, 16)
    assert int((sae.encode(x) > 0).sum(-1).max()) <= 5
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: the ReLU after TopK removes none of the k
    counts = (sae.encode(x) > 0).sum(-1)
    assert counts.tolist() == [5] * 200
    assert sae.encode(x.reshape(10, 20, 16)).shape == (10, 20, 64)


def test_topk_sae_recovers_a_synthetic_sparse_dictionary():
    x, dictionary = sparse_signal(6000)
    sae, report = train_sae(x[:4000], SAEConfig(expansion=2, k=3, steps=150, batch_size=256, lr=3e-3))
    held_out = reconstruction_error(sae, x[4000:])
    assert held_out["fvu"] < 0.07, held_out  # a linear encoder cannot undo the atoms' overlaps exactly
    assert held_out["l0"] <= 3
    assert report.d_in == 64 and report.d_sae == 128 and report.l0 <= 3
    best_match = (dictionary @ sae.W_dec.detach().T).max(-1).values  # cosine: decoder rows are unit vectors
    assert float((best_match > 0.9).float().mean()) >= 0.9
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(128), atol=1e-5)


def test_relu_l1_penalty_trades_reconstruction_for_sparsity():
    x, _ = sparse_signal(4000)
    fits = {l1: reconstruction_error(train_sae(x, SAEConfig(architecture="relu-l1", l1_coefficient=l1, expansion=2,
                                                            steps=150, batch_size=256, lr=3e-3))[0], x)
            for l1 in (0.03, 1.0)}
    assert fits[1.0]["l0"] < fits[0.03]["l0"] / 3
    assert fits[0.03]["fvu"] < fits[1.0]["fvu"]


def test_save_and_load_round_trip(tmp_path):
    x, _ = sparse_signal(1000, d=16, atoms=20)
    sae, _ = train_sae(x, SAEConfig(expansion=2, k=4, steps=20, batch_size=128))
    path = sae.save(tmp_path / "sae.safetensors")
    loaded = SAE.load(path)
    assert loaded.config == sae.config and float(loaded.scale) == float(sae.scale)
    assert torch.equal(loaded(x), sae(x).detach())
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle


def test_load_refuses_foreign_and_mismatched_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DataError, match="without an SAE config"):
        SAE.load(tmp_path / "other.safetensors")
    config = SAEConfig(d_in=8, expansion=2)
    wrong = {k: torch.zeros(3) for k in SAE(config).state_dict()}
    save_file(wrong, str(tmp_path / "bad.safetensors"),
              metadata={"nnforge.sae.config": json.dumps(config.to_dict())})
    with pytest.raises(IntegrityError, match="do not match"):
        SAE.load(tmp_path / "bad.safetensors")
    with pytest.raises(DataError, match="no such SAE file"):
        SAE.load(tmp_path / "missing.safetensors")


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="did you mean 'topk'"):
        SAEConfig(architecture="top-k")
    with pytest.raises(ConfigError, match="expansion"):
        SAEConfig(expansion=0)
    assert {"relu-l1", "topk"} <= set(SAE_ARCHITECTURES.names())
    with pytest.raises(ConfigError, match="d_in"):
        SAE(SAEConfig())


def test_training_refuses_wrong_shapes_and_widths():
    with pytest.raises(DataError, match="tokens, width"):
        train_sae(torch.randn(100), SAEConfig(steps=1))
    with pytest.raises(ConfigError, match="width 8"):
        train_sae(torch.randn(100, 8), SAEConfig(d_in=16, steps=1))
    with pytest.raises(ConfigError, match="needs batches="):
        train_sae(tiny_gpt(), SAEConfig(steps=1))
    with pytest.raises(ModelError, match="width 16"):
        SAE(SAEConfig(d_in=16)).encode(torch.randn(3, 8))


# --- sites, splicing, evaluation ------------------------------------------------------------------------------

def test_residual_sites_of_the_char_gpt_are_the_blocks_outputs():
    model = tiny_gpt()
    assert residual_site(model, 0) == "transformer.drop" and residual_site(model, 2) == "transformer.h.1"
    x, _ = char_batches(1)[0]
    acts = collect_activations(model, [(x, x)], "residual.1")
    with torch.no_grad():
        h = model.transformer.wte(x) + model.transformer.wpe(torch.arange(x.shape[1]))
        expected = model.transformer.h[0](h)
    assert torch.allclose(acts, expected.reshape(-1, 16), atol=1e-6)
    assert collect_activations(model, char_batches(3), "residual.2", max_tokens=100).shape == (100, 16)


def test_wrong_site_names_get_clear_errors():
    model = tiny_gpt()
    with pytest.raises(ConfigError, match=r"residual.0 \(embeddings\) to residual.2"):
        resolve_site(model, "residual.7")
    with pytest.raises(ConfigError, match="did you mean 'transformer.h.1'"):
        resolve_site(model, "transformer.h.l")
    with pytest.raises(ConfigError, match="no site"):
        collect_activations(model, char_batches(1), "blocks.2")
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ModelError, match="does not output activations"):  # token ids are not activations
        collect_activations(nn.Sequential(nn.Embedding(4, 3), _Argmax(), nn.Embedding(3, 4)), [(ids, ids)], "1")
    with pytest.raises(ModelError, match="site 'residual.1' of CharGPT has width 16; this SAE reads width 8"):
        evaluate_sae(SAE(SAEConfig(d_in=8, expansion=2)), model, char_batches(1), site="residual.1")


def test_an_identity_sae_spliced_in_leaves_the_loss_unchanged():
    model = tiny_gpt()
    batches = char_batches(3)
    result = evaluate_sae(identity_sae(16), model, batches, site="residual.1")
    assert result.val_loss is not None and result.val_loss_with_sae is not None
    assert abs(result.val_loss_with_sae - result.val_loss) < 1e-5
    assert abs(result.loss_increase or 0.0) < 1e-5 and result.kl_with_sae < 1e-6 and result.fvu < 1e-10
    noisy = evaluate_sae(SAE(SAEConfig(d_in=16, expansion=2, k=1)), model, batches, site="residual.1")
    assert noisy.val_loss == pytest.approx(result.val_loss)
    assert noisy.kl_with_sae > 1e-3 and noisy.fvu > 0.1
    with replace_activations(model, "residual.1", torch.zeros_like):  # the hook really replaces
        assert not torch.allclose(model(batches[0][0])[0], tiny_gpt()(batches[0][0])[0])
    assert torch.allclose(model(batches[0][0])[0], tiny_gpt()(batches[0][0])[0])  # and is removed after


def test_alive_counts_the_latents_that_fire_on_the_first_tokens():
    model = ToyLM(torch.eye(6))  # token t → one-hot e_t: only latent t of the identity SAE fires
    first = torch.tensor([[0, 0, 0, 0, 0, 0]])
    later = torch.tensor([[1, 2, 3, 1, 2, 3]])
    batches = [(first, first), (later, later)]
    everything = evaluate_sae(identity_sae(6), model, batches, site="emb", context=8, decode=lambda ids: "".join("abcdef"[i]
                                                                                                    for i in ids))
    assert (everything.alive, everything.dead, everything.alive_tokens, everything.tokens) == (4, 8, 12, 12)
    assert everything.alive_fraction == pytest.approx(4 / 12) and everything.l0 == pytest.approx(1.0)
    early = evaluate_sae(identity_sae(6), model, batches, site="emb", alive_tokens=6)
    assert (early.alive, early.alive_tokens) == (1, 6)
    top = everything.features[0]  # latent 0 carries the most activation (6 tokens)
    assert top.index == 0 and top.frequency == pytest.approx(0.5) and top.max_activation == pytest.approx(1.0)
    assert [ex.token for ex in everything.features[1].examples] == ["b", "b"]
    assert str(everything.features[1].examples[0]).endswith("[b]cd")
    json.dumps(everything.to_dict())


def test_train_on_a_model_and_report_max_activating_examples():
    model = tiny_gpt()
    vocab = "abcdefghijklmnop"
    sae, report = train_sae(model, SAEConfig(expansion=2, k=4, steps=30, batch_size=256), batches=char_batches(8),
                            site="residual.2")
    assert report.site == "residual.2" and report.tokens == 8 * 4 * 16
    result = evaluate_sae(sae, model, char_batches(2, seed=1), site="residual.2", top_features=3, examples=2,
                          decode=lambda ids: "".join(vocab[i] for i in ids), context=6)
    assert len(result.features) == 3 and result.l0 <= 4
    for feature in result.features:
        assert 1 <= len(feature.examples) <= 2 and feature.examples[0].activation == pytest.approx(feature.max_activation)
        assert all(len(ex.token) == 1 and len(ex.before) <= 6 for ex in feature.examples)
    doc = result.to_dict()
    assert set(doc) >= {"val_loss", "val_loss_with_sae", "loss_increase", "alive_fraction", "fvu", "l0", "features"}
    json.dumps(doc)
    json.dumps(report.to_dict())


class _FakeBertLayer(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d, d)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        return (torch.tanh(self.dense(h)),)  # Hugging Face layers of older versions return tuples


class _FakeBert(nn.Module):
    """The names of a BERT-style encoder (``embeddings``, ``encoder.layer``) without transformers' import time."""

    config = SimpleNamespace(hidden_size=8, max_position_embeddings=32)

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(30, 8)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_FakeBertLayer(8) for _ in range(2))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        h = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            h = layer(h)[0]
        return SimpleNamespace(last_hidden_state=h)


def test_text_classifier_layers_skip_padding_and_splice_through_tuples():
    from nnforge.models.text import TextClassifier

    torch.manual_seed(0)
    model = TextClassifier(_FakeBert(), tokenizer=None, num_classes=2).eval()
    assert residual_site(model, 2) == "encoder.encoder.layer.1"
    ids = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(), "labels": torch.tensor([0, 1])}
    acts = collect_activations(model, [batch], "residual.1")
    assert acts.shape == (7, 8)  # the 4 + 3 real tokens, not the padding
    result = evaluate_sae(identity_sae(8), model, [batch], site="residual.1")
    assert result.tokens == 7 and result.val_loss == pytest.approx(result.val_loss_with_sae, abs=1e-6)
