"""finetune_classifier's ``on_eval``: every epoch's validation reaches it, and returning True ends training there
(how a search's pruner stops a poor fine-tuning trial); the best epoch so far is what the model keeps."""

from __future__ import annotations

from nnforge.adapt import FinetuneConfig, LoraConfig, apply_lora_, finetune_classifier
from nnforge.models.text import load_minilm

TEXTS = ["love and a wedding feast", "murder most foul and blood", "the king and his crown"] * 4
LABELS = [0, 1, 2] * 4


def test_on_eval_hears_each_epoch_and_can_stop_training():
    model = load_minilm(num_classes=3, max_length=16)
    apply_lora_(model, LoraConfig(r=2, target_modules=("query",), layers=(5,)))
    heard = []

    def on_eval(step, metrics):
        heard.append((step, dict(metrics)))
        return metrics["epoch"] >= 2  # stop after the second of four epochs

    cfg = FinetuneConfig(epochs=4, batch_size=6, wise_alphas=(), patience=10)
    result = finetune_classifier(model, TEXTS, LABELS, TEXTS[:6], LABELS[:6], cfg, on_eval=on_eval,
                                 frozen_layers=5)
    assert [m["epoch"] for _, m in heard] == [1.0, 2.0]
    assert [s for s, _ in heard] == [2, 4]  # 12 texts / batch 6: two steps per epoch
    assert [h["val_acc"] for h in result.history[1:]] == [m["accuracy"] for _, m in heard]
    assert result.steps == 4 and "by on_eval" in result.stop_reason
    assert result.final_val_acc == result.best_val_acc == max(h["val_acc"] for h in result.history)
