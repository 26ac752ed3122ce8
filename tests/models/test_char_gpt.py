"""The char-GPT reference model: registry, shapes, tying, causality, config checks, and that it learns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from nnforge.errors import ConfigError, ModelError
from nnforge.models import ARCHITECTURES, build
from nnforge.models.char_gpt import CharGPT, CharGPTConfig


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models train much faster without intra-op threads competing for a busy machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_defaults_shapes_and_tied_head() -> None:
    assert "char-gpt" in ARCHITECTURES.names()
    model = build("char-gpt")
    assert isinstance(model, CharGPT)
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (4, 4, 128, 64, 84)
    assert model.lm_head.weight is model.transformer["wte"].weight
    idx, targets = torch.randint(0, 84, (3, 64)), torch.randint(0, 84, (3, 64))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 64, 84) and loss is not None
    assert abs(loss.item() - torch.log(torch.tensor(84.0)).item()) < 0.3  # near uniform at init
    assert model(idx[:, :10])[1] is None
    assert all(b is None for m in model.modules() if hasattr(m, "bias") for b in [m.bias])


def test_causal() -> None:
    torch.manual_seed(0)
    model = build("char-gpt", n_layer=1, n_embd=32, n_head=2, block_size=16, vocab_size=20).eval()
    idx = torch.randint(0, 20, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 20
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="n_head"):
        CharGPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ConfigError, match="unknown field"):
        build("char-gpt", n_layers=2)
    with pytest.raises(ModelError, match="block_size"):
        build("char-gpt", block_size=8)(torch.zeros(1, 9, dtype=torch.long))


def test_learns_a_repeating_sequence() -> None:
    torch.manual_seed(0)
    model = build("char-gpt", n_layer=1, n_embd=32, n_head=2, block_size=16, vocab_size=8)
    data = torch.arange(8).repeat(4)[None, :17]  # 0 1 2 … 7 0 1 …
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(data[:, :16], data[:, 1:17])[1]
        assert loss is not None
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.2
    out = model.generate(data[:, :4], 4, temperature=0.01)
    assert out.shape == (1, 8)


def test_generate_at_temperature_zero_is_greedy_and_an_empty_prompt_is_refused() -> None:
    torch.manual_seed(0)
    model = build("char-gpt", n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=10).eval()
    idx = torch.randint(0, 10, (2, 3))
    out = model.generate(idx, 4, temperature=0)  # a division by zero before
    assert out.shape == (2, 7) and torch.equal(out, model.generate(idx, 4, temperature=0.0))
    greedy = idx
    for _ in range(4):
        greedy = torch.cat([greedy, model(greedy)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, greedy)
    with pytest.raises(ModelError, match="at least one token"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ModelError, match="temperature"):
        model.generate(idx, 2, temperature=-1.0)
