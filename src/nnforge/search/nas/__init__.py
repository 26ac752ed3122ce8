"""Neural architecture search: named architecture spaces (:data:`SPACES`) over the reference models.

A space is a search space like any other (``dict[str, Param]``), so every sampler searches it, regularized
evolution (``sampler="evolution"``) included; the latency predictor (``nnforge.search.predictor``) screens
its candidates before training::

    from nnforge.search.nas import SPACES
    space = SPACES.get("char-gpt")
    model = space.build({"n_layer": 2, "n_embd": 96, "n_head": 2, "mlp_ratio": 2})

Adding a space is a new module here that calls ``SPACES.add(...)``; no list to edit.
"""

from __future__ import annotations

from nnforge.registry import import_submodules
from nnforge.search.nas._space import SPACES, ArchitectureSpace

__all__ = ["SPACES", "ArchitectureSpace"]

import_submodules(__name__, __path__)
