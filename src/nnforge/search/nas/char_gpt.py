"""``char-gpt``: depth, width, heads and MLP ratio of the character-level GPT around nanoGPT's CPU config.

Widths are multiples of 32 and head counts powers of two up to 8, so heads always divide the width. The
baseline (4 layers, 128 wide, 4 heads, MLP ratio 4) is a point of the space.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nnforge.search._space import Param
from nnforge.search.nas._space import SPACES, ArchitectureSpace


def _context(options: Mapping[str, Any]) -> torch.Tensor:
    """A full context of token 0: (1, block_size) int64, the batch-1 input latency is measured on."""
    return torch.zeros(1, int(options.get("block_size", 64)), dtype=torch.long)


SPACES.add("char-gpt", ArchitectureSpace(
    name="char-gpt",
    architecture="char-gpt",
    params={
        "n_layer": Param(kind="int", low=1, high=6),
        "n_embd": Param(kind="categorical", choices=[64, 96, 128, 160, 192, 256]),
        "n_head": Param(kind="categorical", choices=[1, 2, 4, 8]),
        "mlp_ratio": Param(kind="int", low=1, high=4),
    },
    baseline={"n_layer": 4, "n_embd": 128, "n_head": 4, "mlp_ratio": 4},
    example_input=_context,
))
