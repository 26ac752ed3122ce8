"""Magnitude pruning: drop the weights of smallest absolute value (the data-free baseline)."""

from __future__ import annotations

import torch

from nnforge.compress.prune.criteria._registry import PruneJob, keep_mask, register_criterion

__all__ = ["magnitude_scores"]


def magnitude_scores(job: PruneJob) -> torch.Tensor:
    """``|W|``."""
    return job.w.abs()


@register_criterion("magnitude", score=magnitude_scores, summary="smallest |w| first; needs no data")
def _magnitude(job: PruneJob) -> torch.Tensor:
    return job.w * keep_mask(magnitude_scores(job), job.pattern)
