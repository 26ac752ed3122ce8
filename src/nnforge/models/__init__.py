"""Reference architectures, your own architectures, and loaders for packaged pretrained models.

``register("my-cnn", build_my_cnn, task="image-classification")`` makes your own ``nn.Module`` factory a name
recipes can use (so can a package, through the ``nnforge.models`` entry-point group; see ``docs/own-model.md``);
``build(name, **options)`` builds a registered architecture; ``load("minilm")`` loads the packaged
all-MiniLM-L6-v2 encoder with a classification head (needs the ``hf`` extra).
"""

from __future__ import annotations

from nnforge.models import char_gpt as _char_gpt  # noqa: F401  (registers "char-gpt")
from nnforge.models import digits as _digits  # noqa: F401  (registers "digits-mlp", "digits-cnn")
from nnforge.models._pretrained import PRETRAINED, check_options
from nnforge.models._registry import (
    ARCHITECTURES,
    DATA_KINDS,
    ENTRY_POINT_GROUP,
    TASK_DATA_KINDS,
    TASKS,
    build,
    register,
    task_of,
    unregister,
)
from nnforge.models.family import FAMILIES, family_of

__all__ = ["ARCHITECTURES", "FAMILIES", "family_of", "DATA_KINDS", "ENTRY_POINT_GROUP", "PRETRAINED", "TASKS", "TASK_DATA_KINDS", "build",
           "check_options", "register", "task_of", "unregister"]

TASKS.update({"digits-mlp": "image-classification", "digits-cnn": "image-classification", "char-gpt": "char-lm"})


def load(name: str, num_classes: int = 2, **options: object) -> object:
    """Load a packaged pretrained model by name (``"minilm"``) with a fresh classification head.

    Raises:
        ConfigError: an option the model does not have (the allowed ones are named).
    """
    factory = PRETRAINED.get(name, where="model.name")
    check_options(factory, options, f"pretrained model {name!r}")
    return factory(num_classes=num_classes, **options)


__all__ += ["load"]
