"""Architecture spaces: every sampled combination is a valid model; paths, prefixes and options."""

from __future__ import annotations

import itertools

import optuna
import pytest

from nnforge.errors import ConfigError
from nnforge.models import build
from nnforge.models.char_gpt import CharGPTConfig
from nnforge.models.digits import DigitsCNNConfig
from nnforge.search import suggest
from nnforge.search.nas import SPACES

optuna.logging.set_verbosity(optuna.logging.WARNING)


def grid(space) -> list[dict]:  # type: ignore[no-untyped-def]
    """Every combination of a space whose parameters are categorical or int (without steps)."""
    values = [p.choices if p.kind == "categorical" else list(range(int(p.low), int(p.high) + 1))
              for p in space.params.values()]
    return [dict(zip(space.params, combo, strict=True)) for combo in itertools.product(*values)]


def test_spaces_registered() -> None:
    assert SPACES.names() == ["char-gpt", "digits-cnn"]
    with pytest.raises(ConfigError, match="did you mean 'char-gpt'"):
        SPACES.get("char_gpt")


@pytest.mark.parametrize(("name", "config_cls", "count"), [("char-gpt", CharGPTConfig, 6 * 6 * 4 * 4),
                                                           ("digits-cnn", DigitsCNNConfig, 5 * 5 * 4)])
def test_every_combination_is_a_valid_model(name: str, config_cls: type, count: int) -> None:
    space = SPACES.get(name)
    combos = grid(space)
    assert len(combos) == count
    for params in combos:  # the config validates (heads divide the width, …) without building weights
        config_cls(**space.options(params))
    assert space.baseline in combos


def test_char_gpt_candidate_and_its_mlp_ratio() -> None:
    space = SPACES.get("char-gpt")
    model = space.build({"n_layer": 2, "n_embd": 96, "n_head": 8, "mlp_ratio": 2}, block_size=16)
    block = model.transformer["h"][0]
    assert (len(model.transformer["h"]), block.attn.n_head, block.mlp.c_fc.out_features) == (2, 8, 192)
    # per block: 2 norms (C) + qkv (3C^2) + proj (C^2) + MLP (2 r C^2); embeddings V*C + T*C; final norm C
    c, r, v, t = 96, 2, 84, 16
    assert model.num_params() == 2 * (2 * c + 4 * c * c + 2 * r * c * c) + v * c + t * c + c
    assert space.inputs(space.baseline, block_size=16).shape == (1, 16)
    assert build("char-gpt").config.mlp_ratio == 4  # nanoGPT's MLP unless asked otherwise


def test_digits_cnn_index_paths() -> None:
    space = SPACES.get("digits-cnn")
    assert space.options({"channels[1]": 48, "hidden": 16}) == {"channels": [16, 48], "hidden": 16}
    model = space.build({"channels[0]": 8, "channels[1]": 64, "hidden": 32})
    assert model(space.inputs(space.baseline)).shape == (1, 10)
    assert model.config.channels == (8, 64)


def test_recipe_paths_and_unknown_options() -> None:
    space = SPACES.get("char-gpt")
    assert list(space.space("model.options.")) == ["model.options.n_layer", "model.options.n_embd",
                                                   "model.options.n_head", "model.options.mlp_ratio"]
    with pytest.raises(ConfigError, match="n_layers not among its parameters"):
        space.options({"n_layers": 3})


def test_sampled_on_an_optuna_trial() -> None:
    space = SPACES.get("char-gpt").space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = suggest(study.ask(), space)
        assert params["n_embd"] % params["n_head"] == 0 and 1 <= params["n_layer"] <= 6
        CharGPTConfig(**params)
