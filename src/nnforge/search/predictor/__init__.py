"""A latency predictor for architecture search: fitted on measured (architecture → batch-1 latency) pairs, it
screens candidates before training, so a trial predicted over the latency constraint is skipped::

    from nnforge.search.predictor import architecture_features, fit_latency_predictor
    feats = [architecture_features("char-gpt", p) for p in measured_params]
    predictor = fit_latency_predictor(feats, measured_ms)
    predictor.median_relative_error(held_out_feats, held_out_ms)   # its error on architectures it never saw
    predictor.predict(architecture_features("char-gpt", candidate)) > 3.0   # → skip the candidate

:class:`ScreenedTrial` wraps a trial function so that such candidates are skipped, infeasible, untrained.
"""

from __future__ import annotations

from nnforge.search.predictor._features import architecture_features, model_features
from nnforge.search.predictor._predictor import LatencyPredictor, fit_latency_predictor
from nnforge.search.predictor._screen import PREDICTED_ATTR, SCREENED_ATTR, ScreenedTrial

__all__ = ["LatencyPredictor", "fit_latency_predictor", "architecture_features", "model_features", "ScreenedTrial",
           "SCREENED_ATTR", "PREDICTED_ATTR"]
