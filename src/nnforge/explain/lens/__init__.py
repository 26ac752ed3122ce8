"""The logit lens and the tuned lens for GPTs with the char-GPT's layout: what each layer would predict next.

    from nnforge.explain.lens import TunedLensConfig, lens_predictions, lens_report, train_tuned_lens

    tuned = train_tuned_lens(model, train_batches, TunedLensConfig(steps=300))
    report = lens_report(model, val_batches, tuned)          # per layer: loss, KL to final, top-1 agreement
    preds = lens_predictions(model, "To be, or not to b", encode=corpus.encode, decode=corpus.decode, tuned=tuned)
    table = preds.table()                                      # each layer's top guesses for the next character
"""

from __future__ import annotations

from nnforge.explain.lens._lens import TunedLens, TunedLensConfig, lens_logits, residual_stream, train_tuned_lens
from nnforge.explain.lens._report import LayerLens, LensPredictions, LensReport, lens_predictions, lens_report

__all__ = ["TunedLens", "TunedLensConfig", "train_tuned_lens", "lens_logits", "residual_stream", "LayerLens",
           "LensReport", "LensPredictions", "lens_report", "lens_predictions"]
