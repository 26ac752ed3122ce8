"""The latency predictor: exact features, a planted linear latency recovered, its error on held-out architectures."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from nnforge.errors import ConfigError
from nnforge.search.nas import SPACES
from nnforge.search.predictor import LatencyPredictor, architecture_features, fit_latency_predictor, model_features


def test_model_features_are_exact() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert model_features(model, torch.zeros(1, 4)) == {"flops": 2.0 * (4 * 8 + 8 * 2), "params": 58.0,
                                                        "module_calls": 3.0}
    assert model.training  # the mode is restored


def test_architecture_features_of_a_char_gpt() -> None:
    space = SPACES.get("char-gpt")
    params = {"n_layer": 2, "n_embd": 64, "n_head": 4, "mlp_ratio": 2}
    f = architecture_features("char-gpt", params, block_size=16)
    c, r, t, v = 64, 2, 16, 84
    linear = 2 * 2 * t * (4 * c * c + 2 * r * c * c) + 2 * t * c * v  # 2 layers of Linear (2 flops per MAC), LM head
    attention = 2 * (2 * 2 * t * t * c)  # q k^T and att v per layer
    assert f["flops"] == linear + attention
    assert f["params"] == space.build(params, block_size=16).num_params()  # the tied embedding once
    # per block 2 norms + 2 attention Linear + 3 MLP modules (+ 3 dropouts); embeddings, drop, final norm, head
    assert f["module_calls"] == 2 * (2 + 2 + 3 + 2) + 5
    assert {k: v for k, v in f.items() if k.startswith("option:")} == {f"option:{k}": float(v) for k, v in params.items()}


def test_convolutions_counted() -> None:
    f = architecture_features("digits-cnn", {"channels[0]": 16, "channels[1]": 32, "hidden": 64})
    conv = 2 * (16 * 8 * 8 * 1 * 9 + 32 * 8 * 8 * 16 * 9)  # output elements x (in channels x 3 x 3)
    assert f["flops"] == conv + 2 * (32 * 4 * 4 * 64 + 64 * 10)
    assert f["module_calls"] == 12  # conv, bn, relu x2, pool; flatten, dropout, linear, relu, linear


@pytest.fixture(scope="module")
def features() -> list[dict[str, float]]:
    """40 architectures' features, shaped like char-GPTs' (computed, not built: building is the slow part)."""
    rng = random.Random(0)
    out = []
    for _ in range(40):
        depth, width, ratio = rng.randint(1, 6), rng.choice([64, 96, 128, 160, 192, 256]), rng.randint(1, 4)
        per_layer = 2 * 64 * (4 + 2 * ratio) * width * width + 4 * 64 * 64 * width
        out.append({"flops": float(depth * per_layer + 2 * 64 * width * 84), "module_calls": 9.0 * depth + 5,
                    "params": float(depth * (4 + 2 * ratio) * width * width + 148 * width),
                    "option:n_layer": float(depth), "option:n_embd": float(width)})
    return out


def planted(f: dict[str, float]) -> float:
    return 0.3 + 4e-8 * f["flops"] + 0.02 * f["module_calls"]


def test_recovers_a_planted_latency_model(features: list[dict[str, float]]) -> None:
    truth = [planted(f) for f in features]
    predictor = fit_latency_predictor(features[:10], truth[:10], names=["flops", "module_calls"], ridge=0.0)
    assert predictor.median_relative_error(features[10:], truth[10:]) < 1e-9
    assert predictor.predict(features[20]) == pytest.approx(truth[20], rel=1e-9)
    again = LatencyPredictor.from_dict(predictor.to_dict())
    assert again == predictor


def test_held_out_error_with_measurement_noise(features: list[dict[str, float]]) -> None:
    rng = np.random.default_rng(0)
    noisy = [planted(f) * float(np.exp(rng.normal(0.0, 0.05))) for f in features]  # 5% log-normal noise
    predictor = fit_latency_predictor(features[:20], noisy[:20])  # every feature, the ridge on
    error = predictor.median_relative_error(features[20:], noisy[20:])
    assert 0.005 < error < 0.10  # about the noise: the model is right, the measurements are not exact
    assert predictor.fitted_on == 20 and "flops" in predictor.names


def test_bad_input_is_refused(features: list[dict[str, float]]) -> None:
    with pytest.raises(ConfigError, match="at least 2 measured architectures"):
        fit_latency_predictor(features[:1], [1.0])
    with pytest.raises(ConfigError, match="positive"):
        fit_latency_predictor(features[:2], [1.0, -1.0])
    predictor = fit_latency_predictor(features[:5], [planted(f) for f in features[:5]], names=["flops"])
    with pytest.raises(ConfigError, match="needs the features flops"):
        predictor.predict({"params": 1.0})


TRAINED: list[int] = []


def stand_in_trial(ctx) -> dict[str, float]:  # type: ignore[no-untyped-def]
    TRAINED.append(ctx.number)
    return {"val_loss": 64.0 / ctx.params["n_embd"], "latency_b1_ms": 0.0}


def test_screened_candidates_are_skipped_untrained_and_infeasible(tmp_path) -> None:
    from nnforge.search import Objective, Param, SearchConfig, search
    from nnforge.search.nas import ArchitectureSpace
    from nnforge.search.predictor import PREDICTED_ATTR, SCREENED_ATTR, ScreenedTrial

    gpt = SPACES.get("char-gpt")  # a small slice of it, so that building candidates takes no time
    space = ArchitectureSpace(name="small-gpt", architecture="char-gpt", example_input=gpt.example_input,
                              params={"n_layer": Param(kind="int", low=1, high=4),
                                      "n_embd": Param(kind="categorical", choices=[32, 64])},
                              base_options={"n_head": 2, "block_size": 8})
    known = [architecture_features(space, {"n_layer": d, "n_embd": 64}) for d in (1, 2, 3)]
    predictor = fit_latency_predictor(known, [f["flops"] / 1e6 for f in known], names=["flops"],
                                      ridge=0.0)  # planted: 1 ms per MFLOP
    limit = 1.5  # MFLOPs at 8 tokens: 0.25 to 3.3 in this space
    trial = ScreenedTrial(stand_in_trial, predictor, space, limit, skipped={"val_loss": 99.0})
    config = SearchConfig(space=space.space(), objectives=[Objective(metric="val_loss")],
                          constraints=[f"latency_b1_ms <= {limit}"], sampler="random", trials=6, seed=0)
    TRAINED.clear()
    result = search(trial, config, storage=tmp_path / "screen.journal")
    screened = [t for t in result.trials if SCREENED_ATTR in t.attrs]
    assert screened and len(screened) < 6
    assert sorted(TRAINED) == sorted(t.number for t in result.trials if SCREENED_ATTR not in t.attrs)
    for t in result.trials:
        predicted = architecture_features(space, t.params)["flops"] / 1e6
        assert t.attrs[PREDICTED_ATTR] == pytest.approx(predicted, rel=1e-6)
        assert (SCREENED_ATTR in t.attrs) == (predicted > limit)
    assert all(t.feasible is False and t.metrics == {"val_loss": 99.0, "latency_b1_ms": t.attrs[PREDICTED_ATTR]}
               for t in screened)
    assert result.best_trial is not None and SCREENED_ATTR not in result.best_trial.attrs
