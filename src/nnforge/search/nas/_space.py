"""Architecture spaces: a model from the registry and the options a search may vary, each a :class:`Param`.

A space's keys are paths into the model's options (``"n_layer"``, ``"channels[0]"``), so ``space.space()`` is a
search space for the library and ``space.space("model.options.")`` the same space as recipe paths. Every
combination a space can sample is a valid model (widths are multiples of every head count, and so on):
a search never spends a trial on a configuration the model would refuse.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from nnforge.errors import ConfigError
from nnforge.registry import Registry
from nnforge.search._space import Param

__all__ = ["ArchitectureSpace", "SPACES"]

_PATH = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?")


@dataclass(frozen=True)
class ArchitectureSpace:
    """A named architecture space.

    Args:
        name: the registered name (``"char-gpt"``).
        architecture: the model's name in :data:`nnforge.models.ARCHITECTURES`.
        params: the searched options by path (``"n_embd"``, ``"channels[1]"``).
        base_options: the options every candidate starts from (the model's defaults for the rest); a path
            with an index needs its list here.
        baseline: the searched options' values of the reference configuration (e.g. nanoGPT's CPU config).
        example_input: ``example_input(options) -> inputs``: one batch-1 input for a model with these options
            (what latency is measured and FLOPs are counted on).
    """

    name: str
    architecture: str
    params: Mapping[str, Param]
    base_options: Mapping[str, Any] = field(default_factory=dict)
    baseline: Mapping[str, Any] = field(default_factory=dict)
    example_input: Callable[[Mapping[str, Any]], Any] | None = None

    def space(self, prefix: str = "") -> dict[str, Param]:
        """The search space, each key prefixed (``"model.options."`` gives recipe paths)."""
        return {f"{prefix}{key}": param for key, param in self.params.items()}

    def options(self, params: Mapping[str, Any], **fixed: Any) -> dict[str, Any]:
        """The model's options for sampled ``params`` (keys as in :meth:`space` without a prefix).

        Args:
            params: sampled values by path; unknown paths are an error.
            fixed: options set as given (``vocab_size=65``), applied before the sampled values.

        Raises:
            ConfigError: a path is not a parameter of this space.
        """
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ConfigError(f"architecture space {self.name!r}: {', '.join(unknown)} not among its parameters "
                              f"({', '.join(self.params)})")
        options = {**copy.deepcopy(dict(self.base_options)), **fixed}
        for path, value in params.items():
            _set(options, path, value)
        return options

    def build(self, params: Mapping[str, Any], **fixed: Any) -> nn.Module:
        """Build the candidate (``nnforge.models.build`` validates its options)."""
        from nnforge.models import build

        return build(self.architecture, **self.options(params, **fixed))

    def inputs(self, params: Mapping[str, Any], **fixed: Any) -> Any:
        """One batch-1 input for the candidate.

        Raises:
            ConfigError: the space declares no ``example_input``.
        """
        if self.example_input is None:
            raise ConfigError(f"architecture space {self.name!r} declares no example_input; pass the inputs yourself")
        return self.example_input(self.options(params, **fixed))


def _set(options: dict[str, Any], path: str, value: Any) -> None:
    m = _PATH.fullmatch(path)
    if m is None:
        raise ConfigError(f"architecture option path {path!r}: expected 'name' or 'name[index]'")
    name, index = m.group(1), m.group(2)
    if index is None:
        options[name] = value
        return
    seq = list(options.get(name, ()))
    if int(index) >= len(seq):
        raise ConfigError(f"architecture option path {path!r}: the base options have no {name}[{index}]; "
                          f"give {name!r} in base_options")
    seq[int(index)] = value
    options[name] = seq


SPACES: Registry[ArchitectureSpace] = Registry("architecture space")
