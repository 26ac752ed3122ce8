"""Pruning criteria, registered by name: which weights of a matrix to zero.

- ``magnitude``: smallest ``|w|`` first; no data;
- ``wanda``: smallest ``|w| * ||x||`` first, per output row (Sun et al. 2024); calibration data;
- ``sparsegpt``: one-shot OBS reconstruction from the input Hessian (Frantar & Alistarh 2023), sharing
  GPTQ's Hessian statistics and Cholesky machinery; calibration data.

Every public module of this folder is imported here, so a new criterion is one new file that calls
:func:`register_criterion`.
"""

from __future__ import annotations

from nnforge.compress.prune.criteria._registry import (
    CRITERIA,
    CriterionSpec,
    Pattern,
    PruneJob,
    keep_mask,
    register_criterion,
)
from nnforge.registry import import_submodules

__all__ = ["CRITERIA", "CriterionSpec", "Pattern", "PruneJob", "keep_mask", "register_criterion"]

import_submodules(__name__, __path__)
