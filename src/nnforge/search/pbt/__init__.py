"""Population-based training (Jaderberg et al. 2017; not in Optuna) on the training loop's checkpoints and events.

>>> from nnforge.search import Param
>>> from nnforge.search.pbt import PBTConfig
>>> config = PBTConfig(space={"lr": Param(kind="float", low=1e-4, high=1e-1, log=True)}, population=4,
...                    interval_steps=50, total_steps=200)
>>> config.ready_steps
[50, 100, 150, 200]

:func:`pbt` trains the members in rounds; at each ready point the bottom quantile copies a top member's
checkpoint and perturbs its hyperparameters; :class:`PBTResult` records every exploit/explore.
"""

from __future__ import annotations

from nnforge.search.pbt.config import PBTConfig
from nnforge.search.pbt.explore import explore, perturb_value
from nnforge.search.pbt.population import PBTEvent, PBTMember, PBTResult, pbt

__all__ = ["PBTConfig", "pbt", "PBTResult", "PBTMember", "PBTEvent", "explore", "perturb_value"]
