"""The digits reference models: registry, shapes, configs, and the CNN reaching >= 0.95 test accuracy."""

from __future__ import annotations

import pytest
import torch

from nnforge.errors import ConfigError
from nnforge.models import ARCHITECTURES, build
from nnforge.models.digits import DigitsCNN, DigitsCNNConfig, DigitsMLP


def test_registered_and_shapes():
    assert {"digits-mlp", "digits-cnn"} <= set(ARCHITECTURES.names())
    mlp, cnn = build("digits-mlp", hidden=(32,)), build("digits-cnn", channels=(4, 8), hidden=16)
    assert isinstance(mlp, DigitsMLP) and isinstance(cnn, DigitsCNN)
    images = torch.rand(5, 1, 8, 8)
    for model in (mlp, cnn):
        assert model(images).shape == (5, 10)
        assert model(images.reshape(5, 64)).shape == (5, 10)
    assert build("digits-cnn", num_classes=3)(images).shape == (5, 3)


def test_configs_reject_bad_values():
    with pytest.raises(ConfigError, match="channels"):
        DigitsCNNConfig(channels=(0, 8))
    with pytest.raises(ConfigError, match="hidden"):
        build("digits-mlp", hidden=())
    with pytest.raises(ConfigError, match="unknown field"):
        build("digits-cnn", kernel=5)


@pytest.mark.slow
def test_cnn_reaches_95_percent_on_digits(one_torch_thread):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from nnforge.train import TensorBatches, TrainConfig, accuracy, fit

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.tensor(digits.target)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.2, stratify=digits.target, random_state=0)
    torch.manual_seed(0)
    model = build("digits-cnn")
    config = TrainConfig(max_steps=300, lr=3e-3, weight_decay=1e-4, schedule="cosine", warmup_steps=20,
                         eval_every=100, device="cpu")
    result = fit(model, TensorBatches(x[idx_train], y[idx_train], batch_size=64), config=config,
                 eval_data=TensorBatches(x[idx_test], y[idx_test], batch_size=512, shuffle=False), metric_fn=accuracy)
    assert result.evals[-1]["accuracy"] >= 0.95
    model.eval()
    with torch.no_grad():
        acc = (model(x[idx_test]).argmax(-1) == y[idx_test]).float().mean().item()
    assert acc == pytest.approx(result.evals[-1]["accuracy"], abs=1e-6)
