"""``digits-cnn``: the channels of the two conv blocks and the head's width of the digits CNN."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nnforge.search._space import Param
from nnforge.search.nas._space import SPACES, ArchitectureSpace


def _image(options: Mapping[str, Any]) -> torch.Tensor:
    """One 8×8 image: (1, 1, 8, 8) float32."""
    return torch.zeros(1, 1, 8, 8)


SPACES.add("digits-cnn", ArchitectureSpace(
    name="digits-cnn",
    architecture="digits-cnn",
    params={
        "channels[0]": Param(kind="categorical", choices=[4, 8, 16, 24, 32]),
        "channels[1]": Param(kind="categorical", choices=[8, 16, 32, 48, 64]),
        "hidden": Param(kind="categorical", choices=[16, 32, 64, 128]),
    },
    base_options={"channels": [16, 32]},
    baseline={"channels[0]": 16, "channels[1]": 32, "hidden": 64},
    example_input=_image,
))
