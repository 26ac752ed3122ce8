"""``PlanSearchConfig``: which formats each layer may take, how they are quantized, what the study optimizes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from nnforge.compress.quantize import WeightOnlyConfig
from nnforge.config import Config, config_type
from nnforge.search._api import SearchConfig
from nnforge.search._objectives import Objective
from nnforge.search._space import Param

__all__ = ["PlanSearchConfig", "PLAN_PREFIX", "parse_choice"]

PLAN_PREFIX = "plan:"  # space keys "plan:<module name>" hold a module's choice
_GROUPS = {"g32": 32, "g64": 64, "g128": 128, "g256": 256, "row": None}


def parse_choice(choice: str) -> tuple[str, int | None | Literal["default"]]:
    """``"int4/g128"`` -> ``("int4", 128)``; ``"int8/row"`` -> ``("int8", None)`` (one scale per row);
    ``"int4"`` -> ``("int4", "default")`` (the quantize config's group size); ``"fp32"`` keeps the module.

    Raises:
        ValueError: an unknown group suffix.
    """
    fmt, _, group = choice.partition("/")
    if not group:
        return fmt, "default"
    if group not in _GROUPS:
        raise ValueError(f"{choice!r}: the group suffix must be one of {', '.join('/' + g for g in _GROUPS)}")
    return fmt, _GROUPS[group]


@config_type("search.plan")
class PlanSearchConfig(Config):
    """A compression-plan search: one format per layer (``"fp32"`` keeps a layer), scored by measured objectives.

    Args:
        formats: the choices of a Linear (or Conv2d) layer: a format, optionally with its group size
            (``"int8"``, ``"int4/g32"``, ``"int4/g128"``, ``"int8/row"``; ``"fp32"`` keeps the layer). A bare
            format uses ``quantize.group_size``.
        embedding_formats: the choices of an Embedding table (a bare format uses ``quantize.embedding_group_size``).
        modules: the module names searched (default: every Linear and Embedding the quantizer handles); other
            modules are left in floating point.
        quantize: the weight-only quantization every plan uses (calibrator, symmetry, embedding group size, …);
            its ``fmt``, ``group_size`` and ``plan`` are set by the search.
        objectives, constraints, sampler, sampler_options, trials, timeout_s, seed, study_name: the study (as in
            :class:`~nnforge.search.SearchConfig`). Metrics: the fidelity function's names plus
            :func:`~nnforge.hardware.measure_model`'s (``size_mb``, ``latency_b1_ms``, …).
    """

    formats: list[str] = Field(default_factory=lambda: ["int8", "int4"], min_length=1)
    embedding_formats: list[str] = Field(default_factory=lambda: ["int8", "int4"], min_length=1)
    modules: list[str] | None = None
    quantize: WeightOnlyConfig = Field(default_factory=lambda: WeightOnlyConfig(
        fmt="int4", group_size=32, symmetric=False, calibrator="gptq", embedding_fmt="int4", embedding_group_size=32,
        embedding_symmetric=False))
    objectives: list[Objective] = Field(default_factory=lambda: [Objective(metric="cos_mean", direction="maximize"),
                                                                 Objective(metric="size_mb")], min_length=1)
    constraints: list[str] = []
    sampler: str = "nsga2"
    sampler_options: dict[str, Any] = {}
    trials: int = Field(40, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    seed: int | None = 0
    study_name: str = "plan"

    @model_validator(mode="after")
    def _check(self) -> PlanSearchConfig:
        for field in ("formats", "embedding_formats"):
            values = getattr(self, field)
            if len(set(values)) != len(values):
                raise ValueError(f"{field} lists a format twice: {values}")
            for choice in values:  # every format must be one WeightOnlyConfig accepts (or fp32)
                fmt, group = parse_choice(choice)
                if fmt == "fp32" and group != "default":
                    raise ValueError(f"{field}: {choice!r}: fp32 has no group size; write 'fp32'")
                if fmt != "fp32":
                    WeightOnlyConfig(fmt=fmt, symmetric=True)
        return self

    def search_config(self, space: dict[str, Param]) -> SearchConfig:
        """The study over ``space`` (from :func:`~nnforge.search.plan.plan_space`)."""
        return SearchConfig(space=space, objectives=self.objectives, constraints=self.constraints,
                            sampler=self.sampler, sampler_options=self.sampler_options, trials=self.trials,
                            timeout_s=self.timeout_s, seed=self.seed, study_name=self.study_name)
