"""Sparse autoencoders (SAEs) on a model's activations: train, splice back in, and describe their features.

    from nnforge.explain.sae import SAEConfig, evaluate_sae, train_sae

    sae, report = train_sae(model, SAEConfig(architecture="topk", expansion=8, k=32),
                            batches=train_batches, site="residual.2")
    result = evaluate_sae(sae, model, val_batches, site="residual.2", alive_tokens=10_000, decode=corpus.decode)
    result.loss_increase, result.fvu, result.alive_fraction, result.features[0].examples

Sites (``"residual.<i>"`` or a module name) and batch forms are described in :mod:`._sites`. Architectures are
registered by name in :data:`SAE_ARCHITECTURES` (``topk``: Gao et al. 2024; ``relu-l1``: the classic L1 SAE),
one module each in this folder: a new one is a new file, and nothing here lists it. SAEs are saved as one
safetensors file with their config in its metadata (:meth:`SAE.save`, :meth:`SAE.load`).
"""

from __future__ import annotations

from nnforge.explain.sae._config import SAEConfig
from nnforge.explain.sae._evaluate import (
    FeatureExample,
    FeatureSummary,
    SAEEvaluation,
    evaluate_sae,
    reconstruction_error,
)
from nnforge.explain.sae._module import SAE, save_safetensors
from nnforge.explain.sae._registry import SAE_ARCHITECTURES, Codes, SAEArchitecture, fraction_unexplained
from nnforge.explain.sae._sites import (
    Batch,
    capture,
    collect_activations,
    replace_activations,
    residual_site,
    residual_sites,
    resolve_site,
    run_batch,
)
from nnforge.explain.sae._train import SAEReport, train_sae
from nnforge.registry import import_submodules

__all__ = ["SAE", "save_safetensors", "SAEConfig", "SAEReport", "SAEEvaluation", "FeatureSummary", "FeatureExample", "SAE_ARCHITECTURES",
           "SAEArchitecture", "Codes", "train_sae", "evaluate_sae", "reconstruction_error", "fraction_unexplained",
           "collect_activations", "capture", "replace_activations", "resolve_site", "residual_site",
           "residual_sites", "run_batch", "Batch"]

import_submodules(__name__, __path__)  # registers every architecture of this folder
