"""Training-data attribution: per-example gradients, projections, TracIn and TRAK on tiny problems."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from nnforge.errors import ConfigError, DataError, IntegrityError
from nnforge.explain.data import (
    DATA_ATTRIBUTORS,
    Checkpoint,
    DataAttributionConfig,
    RandomProjection,
    attribute_data,
    checkpoints_from_run,
    per_example_grads,
    preview_example,
    select_parameters,
    self_influence,
)
from nnforge.explain.data.trak import _kernel_rows, _leverage
from nnforge.train import TensorBatches, TrainConfig, fit


def _mlp(seed: int = 0, d_in: int = 2, classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, classes))


class _BagOfTokens(nn.Module):
    """A text-classifier stand-in taking token dicts, like nnforge.models.TextClassifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, H)
        return self.head(pooled)  # (B, C)


def _loop_grads(model: nn.Module, xs, ys, names) -> torch.Tensor:
    """The reference: one backward pass per example, in eval mode."""
    model.eval()
    rows = []
    for i in range(len(ys)):
        x = {k: v[i : i + 1] for k, v in xs.items()} if isinstance(xs, dict) else xs[i : i + 1]
        out = model(**x) if isinstance(x, dict) else model(x)
        loss = nn.functional.cross_entropy(out, ys[i : i + 1])
        params = [p for n, p in model.named_parameters() if n in names]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def _blobs(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) * 0.7 + torch.stack([y * 4.0 - 2.0, torch.zeros(n)], 1)
    return x, y


def _train(model: nn.Module, x, y, steps: int = 120, **options) -> nn.Module:
    fit(model, TensorBatches(x, y, batch_size=16, seed=0), config=TrainConfig(max_steps=steps, lr=0.05, device="cpu",
                                                                               log_every=10_000, **options))
    return model.eval()


# --- per-example gradients ------------------------------------------------------------------------------

def test_vmap_grads_equal_a_python_loop_in_chunks_and_for_selected_parameters():
    model = _mlp(classes=3)
    x, y = torch.randn(13, 2), torch.randint(0, 3, (13,))
    names = [n for n, _ in model.named_parameters()]
    got = per_example_grads(model, x, y, batch_size=5)  # chunks of 5, 5, 3
    assert got.shape == (13, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(got, _loop_grads(model, x, y, names), rtol=1e-5, atol=1e-6)
    last = per_example_grads(model, x, y, parameters=("3.*",))
    torch.testing.assert_close(last, _loop_grads(model, x, y, ["3.weight", "3.bias"]), rtol=1e-5, atol=1e-6)
    assert model.training is False or model.training is True  # the mode is put back, whatever it was


def test_vmap_grads_take_dicts_of_token_tensors():
    model = _BagOfTokens()
    ids = torch.randint(1, 20, (7, 5))
    mask = (torch.rand(7, 5) > 0.3).long()
    y = torch.randint(0, 3, (7,))
    inputs = {"input_ids": ids, "attention_mask": mask}
    got = per_example_grads(model, inputs, y, batch_size=4)
    torch.testing.assert_close(got, _loop_grads(model, inputs, y, [n for n, _ in model.named_parameters()]),
                               rtol=1e-5, atol=1e-6)


def test_the_model_mode_is_restored_and_frozen_parameters_are_left_out():
    model = _mlp()
    model.train()
    model[0].weight.requires_grad_(False)
    assert list(select_parameters(model)) == ["0.bias", "3.weight", "3.bias"]
    per_example_grads(model, torch.randn(3, 2), torch.tensor([0, 1, 0]))
    assert model.training and model[2].training


# --- random projection ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_projection_is_seeded_blockwise_and_preserves_inner_products(kind):
    a = RandomProjection(3000, 512, kind=kind, seed=3)  # three blocks of rows
    b = RandomProjection(3000, 512, kind=kind, seed=3, cache_mb=0)  # regenerated each call
    torch.testing.assert_close(a.matrix(), b.matrix())
    assert not torch.equal(a.matrix(), RandomProjection(3000, 512, kind=kind, seed=4).matrix())
    v = torch.randn(40, 3000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.cat([a(v[:17]), b(v[17:])]), v @ a.matrix(), rtol=1e-4, atol=1e-3)
    exact, projected = v @ v.T, a(v) @ a(v).T
    scale = v.norm(dim=1)[:, None] * v.norm(dim=1)[None, :]
    # Johnson-Lindenstrauss: each inner product is off by about sqrt(2/512) = 0.06 of |a||b|
    assert ((projected - exact).abs() / scale).max() < 0.3
    assert ((projected - exact).abs() / scale).mean() < 0.06


def test_projection_refuses_bad_shapes():
    with pytest.raises(DataError, match=r"\(B, 10\)"):
        RandomProjection(10, 4)(torch.zeros(2, 11))
    with pytest.raises(ConfigError, match="dim_out"):
        RandomProjection(10, 0)


def test_trak_kernel_in_k_and_n_forms_agree():
    g = torch.Generator().manual_seed(0)
    phi, q = torch.randn(6, 20, generator=g), torch.randn(3, 20, generator=g)
    wide = _kernel_rows(phi, q, damping=0.1)  # k > N: the N × N solve
    lam = 0.1 * float(phi.double().pow(2).sum()) / 20
    ref = q.double() @ torch.linalg.solve(phi.double().T @ phi.double() + lam * torch.eye(20, dtype=torch.float64),
                                          phi.double().T)
    torch.testing.assert_close(wide, ref)
    lev = _leverage(phi, 0.1)
    torch.testing.assert_close(lev, torch.diagonal(_kernel_rows(phi, phi, 0.1)))
    assert bool(((lev > 0) & (lev < 1)).all())


# --- the methods on tiny problems -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def contradiction() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two blobs, plus a lone point far from both, twice: labelled 1 (index 60) and 0 (index 61)."""
    x, y = _blobs()
    odd = torch.tensor([[0.0, 5.0]])  # far from both blobs: only these two examples speak for it
    x_train = torch.cat([x, odd, odd + 0.05])
    y_train = torch.cat([y, torch.tensor([1, 0])])
    return _train(_mlp(), x_train, y_train, steps=60), x_train, y_train, odd


@pytest.mark.parametrize("method", ["tracin", "trak"])
def test_a_duplicate_is_most_helpful_and_a_contradiction_most_harmful(method, contradiction):
    model, x_train, y_train, odd = contradiction
    scores = attribute_data(model, (x_train, y_train), (odd, torch.tensor([1])), DataAttributionConfig(method=method))
    assert scores.shape == (1, 62) and scores.method == method
    top = scores.top(0, k=3)
    assert top.helpful[0][0] == 60 and top.helpful[0][1] > 0
    assert top.harmful[0][0] == 61 and top.harmful[0][1] < 0
    assert [s for _, s in top.helpful] == sorted((s for _, s in top.helpful), reverse=True)


FLIPPED = [3, 17, 40, 58, 71]


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory) -> tuple[list[Checkpoint], torch.Tensor, torch.Tensor]:
    """80 points in two blobs, 5 labels flipped, trained with three checkpoints kept."""
    x, y = _blobs(80)
    y[FLIPPED] = 1 - y[FLIPPED]
    folder = tmp_path_factory.mktemp("ckpt")
    _train(_mlp(), x, y, steps=90, checkpoint_every=30, checkpoint_dir=str(folder), keep_checkpoints=3,
           schedule="cosine")
    return checkpoints_from_run(_mlp(), folder), x, y


@pytest.mark.parametrize("method", ["tracin", "trak"])
def test_self_influence_ranks_flipped_labels_high(method, noisy_run):
    checkpoints, x, y = noisy_run
    scores = self_influence(checkpoints, (x, y), DataAttributionConfig(method=method))
    assert scores.shape == (80,)
    flipped = torch.zeros(80, dtype=torch.bool)
    flipped[FLIPPED] = True
    # AUROC: the chance that a flipped example outranks a clean one
    assert (scores[flipped][:, None] > scores[~flipped][None, :]).double().mean() > 0.95
    if method == "tracin":  # the examples the model never fits keep the largest gradients at every checkpoint
        assert set(torch.topk(scores, 5).indices.tolist()) == set(FLIPPED)


def test_tracin_reads_fit_checkpoints_with_their_learning_rates(tmp_path):
    x, y = _blobs(40)
    model = _mlp()
    config = TrainConfig(max_steps=40, lr=0.05, schedule="cosine", warmup_steps=5, checkpoint_every=10,
                         checkpoint_dir=str(tmp_path), keep_checkpoints=3, device="cpu", log_every=10_000)
    result = fit(model, TensorBatches(x, y, batch_size=8, seed=0), config=config)
    checkpoints = checkpoints_from_run(_mlp(seed=5), tmp_path)
    assert [c.step for c in checkpoints] == [20, 30, 40]
    for c in checkpoints[:-1]:  # the lr a checkpoint records is that of the step after it
        assert c.learning_rate == pytest.approx(result.lrs[c.step])  # lrs[i] belongs to step i + 1
    assert checkpoints[-1].learning_rate == pytest.approx(0.05 * config.min_lr_ratio)
    last = checkpoints[-1].load()
    torch.testing.assert_close(last[0].weight, model[0].weight)
    queries = (x[:3], y[:3])
    got = attribute_data(checkpoints, (x, y), queries, DataAttributionConfig(method="tracin")).scores
    want = sum(c.learning_rate * per_example_grads(c.load(), *queries) @ per_example_grads(c.load(), x, y).T
               for c in checkpoints)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    explicit = [Checkpoint(c.load(), learning_rate=c.learning_rate) for c in checkpoints]
    torch.testing.assert_close(attribute_data(explicit, (x, y), queries, DataAttributionConfig(method="tracin")).scores,
                               got)


def test_trak_averages_an_ensemble_and_is_seeded():
    x, y = _blobs(40)
    models = [_train(_mlp(seed=s), x, y, steps=30) for s in (0, 1)]
    config = DataAttributionConfig(method="trak", proj_dim=16, seed=1)
    a = attribute_data(models, (x, y), (x[:4], y[:4]), config).scores
    torch.testing.assert_close(a, attribute_data(models, (x, y), (x[:4], y[:4]), config).scores)
    assert not torch.allclose(a, attribute_data(models, (x, y), (x[:4], y[:4]), config.replace(seed=2)).scores)
    assert not torch.allclose(a, attribute_data(models[:1], (x, y), (x[:4], y[:4]), config).scores)


# --- errors and previews ----------------------------------------------------------------------------------

def test_errors_name_the_problem():
    model, x, y = _mlp(), torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0])
    with pytest.raises(ConfigError, match="did you mean 'tracin'"):
        DataAttributionConfig(method="tracn")
    with pytest.raises(DataError, match="train_set is empty"):
        attribute_data(model, (x[:0], y[:0]), (x, y))
    with pytest.raises(DataError, match="targets has 4, inputs has 5"):
        self_influence(model, (x, y[:4]))
    with pytest.raises(DataError, match="pair"):
        self_influence(model, x)
    with pytest.raises(ConfigError, match="example shape"):
        attribute_data(model, (x, y), (torch.randn(2, 3), y[:2]))
    with pytest.raises(ConfigError, match=r"match no trainable parameter.*0\.weight"):
        self_influence(model, (x, y), DataAttributionConfig(parameters=("head.*",)))
    with pytest.raises(ConfigError, match="at least one model"):
        self_influence([], (x, y))
    with pytest.raises(ConfigError, match="proj_dim"):
        DataAttributionConfig(proj_dim=0)
    scores = attribute_data(model, (x, y), (x[:2], y[:2]), DataAttributionConfig(method="tracin"))
    with pytest.raises(DataError, match=r"query must be an index in \[0, 2\)"):
        scores.top(2)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(IntegrityError, match="no training checkpoints"):
        checkpoints_from_run(_mlp(), tmp_path)
    (tmp_path / "step-000010.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(IntegrityError, match="not a readable checkpoint"):
        checkpoints_from_run(_mlp(), tmp_path)


def test_registry_and_previews():
    assert {"tracin", "trak"} <= set(DATA_ATTRIBUTORS.names())
    image = np.zeros((8, 8))
    image[2:6, 3] = 16
    art = preview_example(image).splitlines()
    assert len(art) == 8 and art[3][6:8] == "@@" and art[0].strip() == ""
    assert preview_example("a line of verse") == "a line of verse"
    assert preview_example(torch.zeros(64)).count("\n") == 7


class _Layer(nn.Module):
    """A BERT-style layer: ``layer(h, attention_mask=additive (B, 1, 1, T)) -> (h,)``, mixing the unmasked tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        weights = torch.softmax(attention_mask[:, 0, 0, :], dim=-1)  # (B, T), zero on padding
        context = (weights.unsqueeze(-1) * h).sum(1, keepdim=True)  # (B, 1, H)
        return (torch.tanh(self.lin(h + context)),)


class _Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(30, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table(input_ids)  # (B, T, H)


class _BertLike(nn.Module):
    """``embeddings`` + ``encoder.layer`` like a Hugging Face BERT, so TextClassifier's split forward works."""

    config = SimpleNamespace(hidden_size=8, max_position_embeddings=16)

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = _Embeddings()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([_Layer(), _Layer()])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        h = self.embeddings(input_ids=input_ids)
        mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(h.dtype).min
        for layer in self.encoder.layer:
            h = layer(h, attention_mask=mask)[0]
        return SimpleNamespace(last_hidden_state=h)


def test_text_classifier_top_gives_the_full_models_gradients():
    from nnforge.explain.data import TextClassifierTop
    from nnforge.models.text import TextClassifier

    torch.manual_seed(0)
    classifier = TextClassifier(_BertLike(), tokenizer=None, num_classes=3)
    ids = torch.randint(3, 30, (5, 6))
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[1, 4:] = 0
    y = torch.tensor([0, 2, 1, 1, 0])
    top = TextClassifierTop(classifier, first_layer=1)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    got = per_example_grads(top, top.inputs(batch, batch_size=2), y, batch_size=3)  # token_type_ids dropped
    classifier.eval()
    params = [p for _, p in top.named_parameters()]
    assert len(params) == 4  # layer 1 and the head: the embeddings and layer 0 stay out
    want = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        nn.functional.cross_entropy(classifier(ids[i : i + 1], mask[i : i + 1]), y[i : i + 1]), params)])
        for i in range(5)])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match=r"first_layer must be an integer in \[0, 2\]"):
        TextClassifierTop(classifier, first_layer=3)
