"""Wanda (Sun et al. 2024, "A Simple and Effective Pruning Approach for Large Language Models"): drop the
weights of smallest ``|W_ij| * ||X_j||``, compared within each output row, with no weight update."""

from __future__ import annotations

import torch

from nnforge.compress.prune.criteria._registry import PruneJob, keep_mask, register_criterion
from nnforge.errors import ConfigError

__all__ = ["wanda_scores"]


def wanda_scores(job: PruneJob) -> torch.Tensor:
    """``|W_ij| * rms(x_j)``: the root mean square of input feature ``j`` over the calibration tokens is
    ``||X_j||₂ / sqrt(n)``, read from the diagonal of the layer's Hessian ``XᵀX / n`` (the constant ``sqrt(n)``
    changes no ranking within a layer and keeps scores comparable between layers for global scope)."""
    if job.stats is None:
        raise ConfigError("criterion 'wanda' needs the layer's calibration statistics: pass calibration= batches")
    norms = torch.diagonal(job.stats.hessian).clamp_min(0.0).sqrt().to(torch.float32)
    return job.w.abs() * norms.unsqueeze(0)


@register_criterion("wanda", score=wanda_scores, needs_data=True, compare="row",
                    summary="smallest |w| * ||x|| per output row; calibration data, no weight update")
def _wanda(job: PruneJob) -> torch.Tensor:
    return job.w * keep_mask(wanda_scores(job), job.pattern)
