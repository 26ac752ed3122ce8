"""The configuration of a cascade: its tiers in order, each with the confidence its answers need to stand and
the largest share of requests it may be asked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError

__all__ = ["TierConfig", "CascadeConfig"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


@config_type("deploy.cascade.tier")
class TierConfig(Config):
    """One tier: a name, a registered ``kind`` (``local``, ``http``, ``openai``, ``human``, or one you
    registered with :func:`~nnforge.deploy.cascade.register_tier`) and that kind's ``options``.

    An answer stands when its status is ``answered`` and its confidence is at least ``min_confidence``;
    otherwise the input goes up to the next tier. The last tier's answers always stand. ``max_share`` caps the
    share of all requests that may reach this tier (counted over every request the cascade has served): when
    more would, the most uncertain go (flagged ones first, then the least confident) and the others keep the
    answer of the tier below.
    """

    name: str = Field(..., pattern=_NAME, description="how results and reports name the tier")
    kind: str = Field(..., description="a registered tier kind")
    min_confidence: float = Field(0.0, ge=0, le=1, description="an answer below it goes up (ignored on the last "
                                                               "tier)")
    max_share: float | None = Field(None, gt=0, le=1, description="largest share of all requests that may reach "
                                                                 "this tier; None: no cap")
    options: dict[str, Any] = Field(default_factory=dict, description="the kind's options (its Options config)")

    @model_validator(mode="after")
    def _known_kind_and_options(self) -> TierConfig:
        self.options_config()
        return self

    def options_config(self) -> Config:
        """The options validated by the kind's ``Options`` config."""
        import nnforge.deploy.cascade.tiers  # noqa: F401  (registers the built-in kinds)
        from nnforge.deploy.cascade._tier import TIER_KINDS

        kind = TIER_KINDS.get(self.kind, where=f"tier {self.name!r}: kind")
        try:
            return kind.Options(**self.options)
        except ConfigError as exc:
            problems = "; ".join(line.rstrip(".") for line in str(exc).splitlines())
            raise ValueError(f"tier {self.name!r} (kind {self.kind!r}) options: {problems}.") from None


@config_type("deploy.cascade")
class CascadeConfig(Config):
    """Tiers from the cheapest to the most trusted (e.g. a small model, a large model, a person)."""

    tiers: list[TierConfig] = Field(..., min_length=2, max_length=16, description="the tiers, cheapest first")

    @model_validator(mode="after")
    def _distinct_names(self) -> CascadeConfig:
        names = [t.name for t in self.tiers]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"tiers: each tier needs its own name; {twice} appear more than once")
        if self.tiers[0].max_share is not None:
            raise ValueError(f"tiers[0].max_share: the first tier ({self.tiers[0].name!r}) takes every request; "
                             f"a cap applies only to later tiers. Got {self.tiers[0].max_share} instead.")
        return self

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tiers]

    def tier(self, name: str) -> TierConfig:
        """The tier called ``name``."""
        for t in self.tiers:
            if t.name == name:
                return t
        raise ConfigError(f"cascade: no tier called {name!r}; tiers: {self.names}")

    def with_thresholds(self, thresholds: Mapping[str, float]) -> CascadeConfig:
        """A copy whose tiers named in ``thresholds`` take those ``min_confidence`` values."""
        unknown = sorted(set(thresholds) - set(self.names))
        if unknown:
            raise ConfigError(f"cascade thresholds: no tier called {unknown}; tiers: {self.names}")
        tiers = [t.model_dump() | ({"min_confidence": float(thresholds[t.name])} if t.name in thresholds else {})
                 for t in self.tiers]
        return CascadeConfig(tiers=tiers)
