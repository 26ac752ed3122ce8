"""Explaining models: feature attribution (:mod:`~nnforge.explain.attribution`), training-data attribution
(:mod:`~nnforge.explain.data`), sparse autoencoders (:mod:`~nnforge.explain.sae`), the logit and tuned lens
(:mod:`~nnforge.explain.lens`), benign shifts (:mod:`~nnforge.explain.benign`), and out-of-distribution
detectors, their metrics, and the guard that applies them at inference."""

from __future__ import annotations

from nnforge.explain.attribution import ATTRIBUTION_METHODS, Attribution, AttributionConfig, attribute, deletion_curve
from nnforge.explain.data import (
    DATA_ATTRIBUTORS,
    DataAttributionConfig,
    InfluenceScores,
    attribute_data,
    checkpoints_from_run,
    self_influence,
)
from nnforge.explain.lens import TunedLens, TunedLensConfig, lens_predictions, lens_report, train_tuned_lens
from nnforge.explain.ood import (
    KNN,
    MSP,
    OOD_DETECTORS,
    Energy,
    Mahalanobis,
    MaxLogit,
    OODDetector,
    RelativeMahalanobis,
    Residual,
    ViM,
    build_detector,
)
from nnforge.explain.ood_ensemble import Ensemble, EnsembleMember
from nnforge.explain.ood_guard import OODGuard, OODResult, TextFeatures
from nnforge.explain.ood_lm import TokenNgram
from nnforge.explain.ood_metrics import auroc, fpr_at_tpr, threshold_at_recall
from nnforge.explain.sae import SAE, SAE_ARCHITECTURES, SAEConfig, evaluate_sae, train_sae

__all__ = ["ATTRIBUTION_METHODS", "Attribution", "AttributionConfig", "attribute", "deletion_curve", "DATA_ATTRIBUTORS",
           "DataAttributionConfig", "InfluenceScores", "attribute_data", "checkpoints_from_run", "self_influence",
           "SAE", "SAEConfig", "SAE_ARCHITECTURES", "train_sae", "evaluate_sae", "TunedLens", "TunedLensConfig",
           "train_tuned_lens", "lens_report", "lens_predictions", "OOD_DETECTORS", "OODDetector", "build_detector", "MSP", "MaxLogit", "Energy", "Mahalanobis",
           "RelativeMahalanobis", "KNN", "Residual", "ViM", "TokenNgram", "Ensemble", "EnsembleMember", "OODGuard",
           "OODResult", "TextFeatures", "auroc", "fpr_at_tpr", "threshold_at_recall"]
