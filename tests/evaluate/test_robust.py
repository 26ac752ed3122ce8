"""Robustness probes: PGD/FGSM bounds and strength, side-effect freedom, text perturbations, adversarial training."""

from __future__ import annotations

import random
import re

import pytest
import torch
from torch import nn

from _tiny import images, small_cnn
from nnforge.config import load_config
from nnforge.errors import ConfigError, DataError
from nnforge.evaluate.robust import (
    TEXT_PERTURBATIONS,
    AdversarialTraining,
    AttackConfig,
    TradesLoss,
    adversarial_batch,
    fgsm,
    perturb_texts,
    pgd,
    robust_accuracy,
    text_robustness,
)
from nnforge.train import Event, TensorBatches, TrainConfig, accuracy, default_loss, fit, on

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one intra-op thread is fastest


@pytest.fixture(scope="module")
def trained_digits():
    """A small CNN trained for 100 steps on digits (about 1 s), with 200 test images."""
    pytest.importorskip("sklearn")
    from nnforge.data import load

    torch.set_num_threads(1)
    data = load("digits")
    x, y = (torch.from_numpy(a) for a in data.splits["train"])
    xt, yt = (torch.from_numpy(a[:200]) for a in data.splits["test"])
    model = small_cnn()
    fit(model, TensorBatches(x, y, batch_size=64), config=TrainConfig(max_steps=100, lr=1e-2, device="cpu"))
    model.eval()
    return model, xt, yt


# --- attacks ---------------------------------------------------------------------------------------------

def test_pgd_linf_stays_in_the_ball_and_the_box_and_raises_the_loss():
    model, (x, y) = small_cnn(), images()
    x_adv = pgd(model, x, y, eps=0.1, steps=10)
    delta = x_adv - x
    assert delta.abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert delta.abs().max() > 0.09  # the attack used its budget
    loss = nn.CrossEntropyLoss()
    model.eval()
    with torch.no_grad():
        assert loss(model(x_adv), y) > loss(model(x), y)


def test_pgd_l2_perturbation_norm_is_at_most_eps():
    model, (x, y) = small_cnn(), images()
    x_adv = pgd(model, x, y, eps=0.5, steps=10, norm="l2")
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert norms.max() <= 0.5 + 1e-5
    assert norms.median() > 0.3  # not a no-op
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    unclamped = pgd(model, x, y, eps=0.5, steps=5, norm="l2", clamp=None)
    assert (unclamped - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5


def test_fgsm_is_one_signed_step_of_eps():
    model, (x, y) = small_cnn(), images()
    x = x * 0.5 + 0.25  # away from the box edges, so that no pixel is clipped
    delta = fgsm(model, x, y, eps=0.05, clamp=None) - x
    moved = delta.abs()
    assert torch.allclose(moved[moved > 0], torch.tensor(0.05), atol=1e-6)


def test_pgd_is_seeded():
    model, (x, y) = small_cnn(), images()
    a, b = pgd(model, x, y, 0.1, seed=3), pgd(model, x, y, 0.1, seed=3)
    c = pgd(model, x, y, 0.1, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pgd_is_at_least_as_strong_as_fgsm_on_a_trained_model(trained_digits):
    model, x, y = trained_digits
    clean = robust_accuracy(model, x, y, None)
    acc_fgsm = robust_accuracy(model, x, y, AttackConfig(kind="fgsm", eps=0.1))
    acc_pgd = robust_accuracy(model, x, y, AttackConfig(kind="pgd", eps=0.1, steps=10))
    assert clean >= 0.85
    assert acc_fgsm < clean
    assert acc_pgd <= acc_fgsm + 0.02
    assert robust_accuracy(model, x, y, AttackConfig(eps=0.1), batch_size=64) == pytest.approx(
        robust_accuracy(model, x, y, AttackConfig(eps=0.1), batch_size=64))


def test_robust_accuracy_without_attack_is_clean_accuracy(trained_digits):
    model, x, y = trained_digits
    with torch.no_grad():
        expected = (model(x).argmax(-1) == y).float().mean().item()
    assert robust_accuracy(model, x, y, None, batch_size=7) == pytest.approx(expected)


@pytest.mark.parametrize("train_mode", [True, False])
def test_attacks_leave_parameters_grads_and_mode_alone(train_mode):
    model, (x, y) = small_cnn(), images()
    model.train(train_mode)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}  # includes batch-norm running statistics
    with torch.no_grad():  # attacks work inside no_grad (e.g. from an evaluation loop)
        pgd(model, x, y, eps=0.1, steps=3)
        fgsm(model, x, y, eps=0.1, norm="l2")
    assert model.training is train_mode
    assert all(m.training is train_mode for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())


def test_attacks_reject_bad_inputs():
    model, (x, y) = small_cnn(), images()
    with pytest.raises(DataError, match="floating-point"):
        pgd(model, x.long(), y, eps=0.1)
    with pytest.raises(DataError, match="rows"):
        pgd(model, x, y[:3], eps=0.1)
    with pytest.raises(ConfigError, match="'eps'"):
        fgsm(model, x, y, eps=0.0)
    with pytest.raises(ConfigError, match="'steps'"):
        pgd(model, x, y, eps=0.1, steps=0)


# --- configs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "field"), [
    ({"eps": 0.0}, "eps"),
    ({"eps": 0.1, "norm": "l1"}, "norm"),
    ({"eps": 0.1, "kind": "cw"}, "kind"),
    ({"eps": 0.1, "steps": 0}, "steps"),
    ({"eps": 0.1, "step_size": -1.0}, "step_size"),
    ({"eps": 0.1, "kind": "fgsm", "steps": 5}, "steps"),
    ({"eps": 0.1, "kind": "fgsm", "step_size": 0.01}, "step_size"),
    ({"eps": 0.1, "clamp": (1.0, 0.0)}, "clamp"),
    ({"eps": 0.1, "seed": -1}, "seed"),
    ({"eps": 0.1, "epsilon": 0.2}, "epsilon"),
    ({}, "eps"),
])
def test_bad_attack_configs_name_the_field(options, field):
    with pytest.raises(ConfigError, match=f"'?{field}'?"):
        AttackConfig(**options)


def test_attack_config_defaults_and_round_trip():
    config = AttackConfig(eps=0.2)
    assert (config.kind, config.norm, config.pgd_steps, config.pgd_step_size) == ("pgd", "linf", 10, 0.05)
    assert AttackConfig(kind="fgsm", eps=0.2).pgd_step_size == 0.2
    assert load_config(config.to_dict()) == config


# --- text perturbations ----------------------------------------------------------------------------------

def word_texts(n: int = 40, words: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))
                     for _ in range(words)) for _ in range(n)]


@pytest.mark.parametrize("kind", TEXT_PERTURBATIONS.names())
def test_text_perturbations_are_seeded(kind):
    texts = word_texts(10)
    a = perturb_texts(texts, kind, rate=0.2, seed=1)
    assert a == perturb_texts(texts, kind, rate=0.2, seed=1)
    assert a != perturb_texts(texts, kind, rate=0.2, seed=2)
    assert a != texts
    assert perturb_texts(texts, kind, rate=0.0, seed=1) == texts
    assert perturb_texts(texts[:3], kind, rate=0.2, seed=1) == a[:3]  # a text's result does not depend on others


def _rate_seen(kind: str, before: list[str], after: list[str]) -> float:
    """The share of units (characters, gaps, words) that the perturbation hit, measured from the output."""
    src, out = "".join(before), "".join(after)
    letters = sum(not c.isspace() for c in src)
    words = sum(len(t.split()) for t in before)
    if kind == "char_swap":  # each swap moves two characters; a character moves at most once
        return sum(a != b for a, b in zip(src, out, strict=True)) / 2 / letters
    if kind == "char_drop":
        return 1 - sum(not c.isspace() for c in out) / letters
    if kind == "case":
        return sum(a != b for a, b in zip(src, out, strict=True)) / letters
    if kind == "word_dropout":
        return 1 - sum(len(t.split()) for t in after) / words
    gaps = words - len(before)  # whitespace: merged gaps lose a word, others are no longer a single space
    merged = words - sum(len(t.split()) for t in after)
    changed = sum(g != " " for t in after for g in re.findall(r"\s+", t))
    return (merged + changed) / gaps


@pytest.mark.parametrize("kind", TEXT_PERTURBATIONS.names())
@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_text_perturbations_hit_about_rate_of_units(kind, rate):
    texts = word_texts()
    seen = _rate_seen(kind, texts, perturb_texts(texts, kind, rate=rate, seed=0))
    if kind == "char_swap":  # a pair is skipped after a swap, and positions at word ends cannot start one
        assert 0.6 * rate <= seen <= rate
    else:
        assert seen == pytest.approx(rate, abs=0.25 * rate + 0.01)


def test_word_dropout_never_empties_a_text_and_keeps_edges():
    assert all(perturb_texts(["just one"] * 20, "word_dropout", rate=1.0, seed=0))
    out = perturb_texts(["  a b c d  "], "word_dropout", rate=0.5, seed=0)[0]
    assert out.startswith("  ") and out.endswith("  ")


def test_perturb_texts_rejects_bad_input():
    with pytest.raises(ConfigError, match="did you mean 'char_swap'"):
        perturb_texts(["x"], "char_swaps", rate=0.1)
    with pytest.raises(ConfigError, match="'rate'"):
        perturb_texts(["x"], "case", rate=1.5)
    with pytest.raises(DataError, match="list"):
        perturb_texts("some text", "case", rate=0.1)


def test_text_robustness_reports_accuracy_and_flips():
    texts = ["good day", "a good one", "bad day", "not good", "bad bad", "good"] * 5
    labels = [int("good" in t) for t in texts]

    def predict(batch: list[str]) -> torch.Tensor:  # case-sensitive keyword rule: casing flips it
        return torch.tensor([int("good" in t) for t in batch])

    report = text_robustness(predict, texts, labels, kinds=["case", "word_dropout"], rate=0.5, seed=0)
    assert report["clean"]["accuracy"] == 1.0
    noisy = perturb_texts(texts, "case", rate=0.5, seed=0)
    flips = sum(int("good" in n) != int("good" in t) for n, t in zip(noisy, texts, strict=True)) / len(texts)
    assert report["case"]["flip_rate"] == pytest.approx(flips) and flips > 0.2
    assert report["case"]["accuracy"] == pytest.approx(1 - flips)
    assert report["case"]["accuracy_drop"] == pytest.approx(flips)
    assert 0 < report["word_dropout"]["changed"] <= 1
    assert text_robustness(predict, texts, None, kinds=["case"], rate=0.5)["case"]["accuracy"] is None
    with pytest.raises(DataError, match="labels"):
        text_robustness(predict, texts, labels[:3])
    with pytest.raises(ConfigError, match="unknown text perturbation"):
        text_robustness(predict, texts, labels, kinds=["typo"])


# --- adversarial training --------------------------------------------------------------------------------

def test_adversarial_training_swaps_the_batch_the_loss_sees():
    x, y = images(16)
    seen: list[torch.Tensor] = []

    def recording_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        seen.append(batch[0].detach().clone())
        return default_loss(model, batch)

    callback = AdversarialTraining(AttackConfig(eps=0.1, steps=3), ratio=0.5)
    fit(small_cnn(), TensorBatches(x, y, batch_size=16, shuffle=False), config=TrainConfig(max_steps=3, device="cpu"),
        loss_fn=recording_loss, callbacks=[callback])
    assert callback.batches_replaced == 3 and len(seen) == 3
    for inputs in seen:
        delta = inputs - x
        assert delta[:8].abs().amax(dim=(1, 2, 3)).min() > 0.05  # every adversarial row moved
        assert delta.abs().max() <= 0.1 + 1e-6
        assert torch.equal(inputs[8:], x[8:])  # the clean half is untouched
    assert not torch.equal(seen[0], seen[1])  # each step attacks the current model with fresh noise


def test_adversarial_training_trains_and_is_reproducible():
    x, y = images(64, seed=1)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()  # a learnable rule: bright or dark

    def run() -> tuple[list[float], float]:
        model = small_cnn(1)
        losses: list[float] = []
        config = TrainConfig(max_steps=40, lr=1e-2, grad_accum=2, device="cpu")
        result = fit(model, TensorBatches(x, y, batch_size=32), config=config, metric_fn=accuracy,
                     eval_data=TensorBatches(x, y, batch_size=64, shuffle=False),
                     callbacks=[AdversarialTraining(AttackConfig(eps=0.02, steps=2), eps_warmup_steps=10),
                                on(Event.STEP_END, lambda s: losses.append(s.loss))])
        return losses, result.evals[-1]["accuracy"]

    losses, acc = run()
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert acc >= 0.8
    assert run()[0] == losses


def test_adversarial_batch_and_callback_reject_bad_input():
    model, (x, y) = small_cnn(), images(4)
    with pytest.raises(DataError, match="tuple or list"):
        adversarial_batch(model, {"x": x, "y": y}, AttackConfig(eps=0.1))
    out = adversarial_batch(model, [x, y, "meta"], AttackConfig(eps=0.1))
    assert isinstance(out, list) and out[2] == "meta" and out[1] is y
    with pytest.raises(ConfigError, match="'ratio'"):
        AdversarialTraining(AttackConfig(eps=0.1), ratio=0.0)
    with pytest.raises(ConfigError, match="'attack'"):
        AdversarialTraining({"eps": 0.1})  # type: ignore[arg-type]
    assert AdversarialTraining(AttackConfig(eps=0.1), eps_warmup_steps=4).eps_at(1) == pytest.approx(0.05)


# --- TRADES ----------------------------------------------------------------------------------------------

def test_trades_loss_is_cross_entropy_when_beta_is_zero_or_the_ball_is_tiny():
    model, (x, y) = small_cnn(), images(16)
    model.eval()  # no dropout: the clean forward passes agree
    ce = default_loss(model, (x, y)).detach()
    plain = TradesLoss(AttackConfig(eps=0.1, steps=3), beta=0.0)(model, (x, y)).detach()
    assert float(plain) == pytest.approx(float(ce), rel=1e-6)
    tiny = TradesLoss(AttackConfig(eps=1e-6, steps=2), beta=6.0)(model, (x, y)).detach()  # x_adv == x up to 1e-6: KL ~ 0
    assert float(tiny) == pytest.approx(float(ce), rel=1e-4)
    big = TradesLoss(AttackConfig(eps=0.5, steps=5), beta=6.0)(model, (x, y)).detach()
    assert torch.isfinite(big) and float(big) > float(ce) + 1e-4  # the KL term is positive once x_adv moves


def test_trades_attack_maximises_the_kl_inside_the_ball():
    model, (x, _) = small_cnn(), images(16)
    trades = TradesLoss(AttackConfig(eps=0.1, steps=5), beta=6.0)
    x_adv = trades.adversarial_inputs(model, x, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
        corner = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).sign()).clamp(0, 1)
        kl = [(p * (p.log() - torch.log_softmax(model(z), -1))).sum() for z in (x_adv, corner)]
    assert kl[0] > kl[1]  # stronger than a random corner of the ball


def test_trades_trains_and_is_reproducible():
    x, y = images(64, seed=1)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()

    def run() -> tuple[list[float], float]:
        model = small_cnn(1)
        losses: list[float] = []
        trades = TradesLoss(AttackConfig(eps=0.02, steps=2), beta=1.0)
        config = TrainConfig(max_steps=30, lr=1e-2, grad_accum=2, device="cpu")
        result = fit(model, TensorBatches(x, y, batch_size=32), config=config, metric_fn=accuracy, loss_fn=trades,
                     eval_data=TensorBatches(x, y, batch_size=64, shuffle=False),
                     callbacks=[trades.callback, on(Event.STEP_END, lambda s: losses.append(s.loss))])
        assert trades.calls >= 60  # every micro-batch (plus evaluation)
        return losses, result.evals[-1]["accuracy"]

    losses, acc = run()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert acc >= 0.8
    assert run()[0] == losses


def test_trades_rejects_bad_input():
    with pytest.raises(ConfigError, match="'beta'"):
        TradesLoss(AttackConfig(eps=0.1), beta=-1.0)
    with pytest.raises(ConfigError, match="'attack'"):
        TradesLoss({"eps": 0.1})  # type: ignore[arg-type]
    x, y = images(4)
    with pytest.raises(DataError, match="tuple or list"):
        TradesLoss(AttackConfig(eps=0.1))(small_cnn(), {"x": x, "y": y})


# --- weight averaging ------------------------------------------------------------------------------------
