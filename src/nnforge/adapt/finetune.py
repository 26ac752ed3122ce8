"""Fine-tuning a text classifier (LoRA adapters + head) with AdamW and early stopping on validation.

Readable top to bottom: tokenise a shuffled batch, forward, cross-entropy, backward, clip, step;
evaluate on the validation split after every epoch; keep the best weights; stop after ``patience``
epochs without improvement.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError, DataError, StepFailedError

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune_classifier", "predict_labels"]

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, int, int], None]


@config_type("finetune")
class FinetuneConfig(Config):
    """Options of :func:`finetune_classifier`."""

    epochs: int = Field(4, ge=1, le=1000)
    batch_size: int = Field(16, ge=1, le=4096)
    lr: float = Field(5e-4, gt=0, le=1.0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.06, ge=0, lt=1)
    clip_norm: float = Field(1.0, gt=0)
    patience: int = Field(2, ge=1)
    seed: int = 0
    # WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models"): interpolate between the
    # starting and the fine-tuned weights, alpha chosen on validation; () turns it off
    wise_alphas: tuple[float, ...] = (0.5, 0.75, 1.0)
    # "balanced" weighs each class by the inverse of its training frequency, so that the model is not
    # pulled towards the classes that happen to be common in training (the val/test plays are balanced)
    class_weights: Literal["balanced"] | None = "balanced"


@dataclass
class FinetuneResult:
    """What happened: per-epoch train loss and validation accuracy, the best epoch, timing."""

    history: list[dict[str, float | None]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = float("nan")
    seconds: float = 0.0
    steps: int = 0
    wise_alpha: float | None = None
    final_val_acc: float = float("nan")  # the returned model's (the best epoch's, or its WiSE interpolation's)
    stop_reason: str | None = None  # why training ended before its epochs (early stopping, ``on_eval``)

    def to_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc,
                "seconds": round(self.seconds, 2), "steps": self.steps, "wise_alpha": self.wise_alpha,
                "final_val_acc": self.final_val_acc, "stop_reason": self.stop_reason}


@torch.inference_mode()
def predict_labels(model: Any, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Argmax predictions of a :class:`~nnforge.models.text.TextClassifier`, in the order given (on the CPU,
    wherever the model is).

    Texts are batched by length (less padding) and the predictions put back in order.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), dtype=torch.long)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        b = model.tokenize([texts[j] for j in idx])
        out[idx] = model(b["input_ids"], b["attention_mask"]).argmax(-1).cpu()
    model.train(was_training)
    return out


def _length_bucketed_batches(texts: list[str], batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of similar-length texts: less padding, same randomness across epochs and seeds.

    Indices are shuffled, cut into pools of 32 batches, sorted by length inside each pool, batched,
    and the batches shuffled again.
    """
    perm = torch.randperm(len(texts), generator=gen).tolist()
    pool = batch_size * 32
    batches = []
    for start in range(0, len(perm), pool):
        chunk = sorted(perm[start : start + pool], key=lambda i: len(texts[i]))
        batches += [torch.tensor(chunk[j : j + batch_size]) for j in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[k] for k in order]


def _interpolate(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Weights on the line from ``start`` to ``end``. LoRA's A matrices keep their end value: with B
    starting at zero, the merged update is then exactly ``alpha`` times the fine-tuned one."""
    return {k: v if "lora_A" in k else torch.lerp(start[k], v, alpha) for k, v in end.items()}


def _choose_interpolation(model: nn.Module, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
                          alphas: tuple[float, ...], score: Callable[[], float]) -> tuple[float, float]:
    """Load the interpolation with the best validation score (ties: the larger alpha); return alpha and score."""
    best_alpha, best_score = 1.0, -1.0
    for alpha in sorted(alphas, reverse=True):
        model.load_state_dict(_interpolate(start, end, alpha), strict=False)
        value = score()
        log.info("WiSE-FT alpha %.2f: validation accuracy %.4f", alpha, value)
        if value > best_score:
            best_alpha, best_score = alpha, value
    model.load_state_dict(_interpolate(start, end, best_alpha), strict=False)
    return best_alpha, best_score


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


def _val_accuracy(model: Any, texts: list[str], labels: list[int], cache: _Cached | None = None) -> float:
    if cache is None:
        return float((predict_labels(model, texts) == torch.tensor(labels)).float().mean())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = torch.cat([_logits(model, texts, list(range(i, min(i + 64, len(texts)))), cache).argmax(-1)
                          for i in range(0, len(texts), 64)])
    model.train(was_training)
    return float((pred.cpu() == torch.tensor(labels)).float().mean())


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return f


class _Cached:
    """Hidden states entering layer ``k`` for each text, computed once with the frozen bottom layers."""

    def __init__(self, model: Any, k: int, texts: list[str], batch_size: int = 64) -> None:
        self.k = k
        self.rows: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                b = model.tokenize([texts[j] for j in idx])
                h = model.hidden_at(k, b["input_ids"], b["attention_mask"])  # (B, T, H)
                for row, j in enumerate(idx):
                    self.rows[j] = h[row, : int(b["attention_mask"][row].sum())].clone()
        model.train(was_training)

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.rows[i] for i in idx]
        t = max(r.shape[0] for r in rows)
        hidden = torch.zeros(len(rows), t, rows[0].shape[1], dtype=rows[0].dtype, device=rows[0].device)
        mask = torch.zeros(len(rows), t, dtype=torch.long, device=rows[0].device)
        for n, r in enumerate(rows):
            hidden[n, : r.shape[0]] = r
            mask[n, : r.shape[0]] = 1
        return hidden, mask


def _logits(model: Any, texts: list[str], idx: list[int], cache: _Cached | None) -> torch.Tensor:
    if cache is not None:
        hidden, mask = cache.batch(idx)
        return model.forward_from(cache.k, hidden, mask)
    batch = model.tokenize([texts[j] for j in idx])
    return model(batch["input_ids"], batch["attention_mask"])


def _check_frozen(model: Any, k: int) -> None:
    """Nothing below layer ``k`` may be trainable: those layers' outputs are cached once, without gradients."""
    emb, layers = model._layers()
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(layers):
        raise ConfigError(f"frozen_layers must be an integer in 0..{len(layers)}; got {k!r}")
    below = [("embeddings", emb)] + [(f"encoder.layer.{i}", layers[i]) for i in range(k)]
    trainable = [f"{where}.{n}" for where, mod in below for n, p in mod.named_parameters() if p.requires_grad]
    if trainable:
        shown = ", ".join(trainable[:4]) + (f" and {len(trainable) - 4} more" if len(trainable) > 4 else "")
        raise ConfigError(f"frozen_layers={k} caches the layers below {k} without gradients, but they hold "
                          f"trainable parameters ({shown}), which would never train: adapt only layers >= {k} "
                          f"(LoraConfig.layers) or lower frozen_layers")


def finetune_classifier(model: Any, train_texts: list[str], train_labels: list[int], val_texts: list[str],
                        val_labels: list[int], config: FinetuneConfig, progress: ProgressFn | None = None,
                        frozen_layers: int = 0,
                        on_eval: Callable[[int, dict[str, float]], bool] | None = None) -> FinetuneResult:
    """Train the trainable parameters of ``model`` (adapters, head) and keep the best epoch's weights.

    Args:
        on_eval: called after each epoch's validation with the steps so far and ``{"accuracy": …,
            "epoch": …}``; returning True ends training there (a search's pruner stops a poor trial so). The
            best epoch so far is still the one kept.
        frozen_layers: when the bottom ``frozen_layers`` encoder layers hold nothing trainable, their
            outputs are computed once and cached (``model.hidden_at``/``forward_from``): each step then
            runs only the top layers. The result equals training the whole model with those layers frozen,
            except that dropout is not applied inside the frozen layers.

    Raises:
        DataError: a split's labels are not one per text, or not in ``[0, num_classes)``.
        ConfigError: ``frozen_layers`` is out of range, or a parameter below it (a LoRA adapter in a lower
            layer, the embeddings) is trainable: cached under no_grad, it would silently never train.
    """
    if len(train_texts) != len(train_labels) or not train_texts:
        raise DataError("fine-tuning needs a non-empty training split with one label per text")
    if max(train_labels) >= model.num_classes or min(train_labels) < 0:
        raise DataError(f"labels must be in [0, {model.num_classes}); got {min(train_labels)}..{max(train_labels)}")
    if len(val_texts) != len(val_labels):
        raise DataError(f"the validation split needs one label per text; got {len(val_texts)} texts and "
                        f"{len(val_labels)} labels")
    if val_labels and (max(val_labels) >= model.num_classes or min(val_labels) < 0):
        raise DataError(f"validation labels must be in [0, {model.num_classes}); got "
                        f"{min(val_labels)}..{max(val_labels)}")
    if frozen_layers:
        _check_frozen(model, frozen_layers)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise StepFailedError("the model has no trainable parameters (apply LoRA or unfreeze a head first)")
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_texts) / config.batch_size)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(config.warmup_fraction * total)))
    labels = torch.tensor(train_labels, device=model.device)  # where the logits will be
    weight = None
    if config.class_weights == "balanced":
        counts = torch.bincount(labels, minlength=model.num_classes).float()
        weight = torch.where(counts > 0, len(labels) / (model.num_classes * counts.clamp_min(1)), torch.zeros(()))
    result, bad_epochs, t0 = FinetuneResult(), 0, time.perf_counter()
    cache = _Cached(model, frozen_layers, train_texts) if frozen_layers > 0 else None
    val_cache = _Cached(model, frozen_layers, val_texts) if frozen_layers > 0 and val_texts else None
    start_state = best_state = _trainable_state(model)  # epoch 0: the starting point is a candidate too
    if val_texts:
        result.best_val_acc = _val_accuracy(model, val_texts, val_labels, val_cache)
        # no training loss before training: None (null in JSON; NaN would make sections.json invalid JSON)
        result.history.append({"epoch": 0, "train_loss": None, "val_acc": result.best_val_acc})
    for epoch in range(config.epochs):
        model.train()
        running = 0.0
        for idx in _length_bucketed_batches(train_texts, config.batch_size, gen):
            loss = F.cross_entropy(_logits(model, train_texts, idx.tolist(), cache), labels[idx], weight=weight)
            value = loss.item()
            if not math.isfinite(value):
                raise StepFailedError(f"fine-tuning diverged at epoch {epoch + 1}, step {result.steps + 1}: "
                                      f"loss is {value}. Lower the learning rate (lr={config.lr}).")
            loss.backward()
            nn.utils.clip_grad_norm_(params, config.clip_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            running += value
            result.steps += 1
            if progress:
                progress("fine-tune", result.steps, total)
        val_acc = _val_accuracy(model, val_texts, val_labels, val_cache) if val_texts else float("nan")
        result.history.append({"epoch": epoch + 1, "train_loss": running / steps_per_epoch, "val_acc": val_acc})
        log.info("epoch %d: train loss %.4f, val acc %.4f", epoch + 1, running / steps_per_epoch, val_acc)
        if not val_texts or math.isnan(result.best_val_acc) or val_acc > result.best_val_acc:
            result.best_val_acc, result.best_epoch, bad_epochs = val_acc, epoch + 1, 0
            best_state = _trainable_state(model)
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                result.stop_reason = f"early stopping after epoch {epoch + 1} (best epoch {result.best_epoch})"
        if on_eval is not None and on_eval(result.steps, {"accuracy": val_acc, "epoch": float(epoch + 1)}):
            result.stop_reason = f"stopped after epoch {epoch + 1} by on_eval (best epoch {result.best_epoch})"
        if result.stop_reason is not None:
            log.info("%s", result.stop_reason)
            if progress:
                progress("fine-tune", total, total)
            break
    model.load_state_dict(best_state, strict=False)
    result.final_val_acc = result.best_val_acc
    if config.wise_alphas and val_texts:
        result.wise_alpha, result.final_val_acc = _choose_interpolation(
            model, start_state, best_state, config.wise_alphas,
            lambda: _val_accuracy(model, val_texts, val_labels, val_cache))
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result
