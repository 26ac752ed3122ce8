"""Base class of every nnforge config: frozen, validated at construction, serialisable.

A config is a pydantic v2 model with ``frozen=True`` and ``extra="forbid"``. Invalid values raise
:class:`~nnforge.errors.ConfigError` with one line per problem, in one form::

    The 'rank' parameter of LoraConfig must be an integer >= 1. Got 0 instead.

Configs serialise to ``{"type": NAME, "version": N, "data": {...}}`` and load back only through
:data:`CONFIG_TYPES`, so a config file can never name arbitrary code.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic._internal._model_construction import ModelMetaclass

from nnforge.errors import ConfigError
from nnforge.registry import Registry

__all__ = ["Config", "CONFIG_TYPES", "config_type", "describe_validation_error", "load_config"]

CONFIG_TYPES: Registry[type[Config]] = Registry("config type")


def config_type(name: str, version: int = 1):  # type: ignore[no-untyped-def]
    """Class decorator: register a :class:`Config` subclass for (de)serialisation under ``name``."""

    def decorator(cls: type[Config]) -> type[Config]:
        cls.type_name = name
        cls.type_version = version
        CONFIG_TYPES.add(name, cls)
        return cls

    return decorator


def _path(loc: tuple[Any, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe_validation_error(exc: ValidationError, *, prefix: str = "", owner: str = "") -> list[str]:
    """Turn a pydantic error into one readable line per problem, each naming its path.

    Args:
        exc: the pydantic error.
        prefix: path of the validated object inside a larger document (``steps[2]``).
        owner: class name used when there is no prefix (``LoraConfig``).
    """
    lines = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        where = _path(loc, prefix) if (prefix or loc) else owner
        given = err.get("input")
        kind = err.get("type", "")
        msg = err.get("msg", "invalid value")
        if kind == "extra_forbidden":
            lines.append(f"{where}: unknown field. Remove it or check its spelling.")
        elif kind == "missing":
            lines.append(f"{where}: required field is missing.")
        elif kind == "value_error":  # our own validators: their message already says what and where
            lines.append(f"{where}: {msg.removeprefix('Value error, ')}")
        else:
            shown = repr(given)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            lines.append(f"The {where!r} parameter{f' of {owner}' if owner and prefix == '' else ''} "
                         f"must satisfy: {msg}. Got {shown} instead.")
    return lines


class _ConfigMeta(ModelMetaclass):
    """Turns validation errors of a direct construction ``SomeConfig(...)`` into a ConfigError.

    Done at the metaclass (not in ``__init__``) so that pydantic's own nested validation, which does not
    go through here, keeps reporting full paths (``steps[1].train.epochs``).
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            lines = describe_validation_error(exc, owner=cls.__name__)
            raise ConfigError("\n".join(lines)) from None


class Config(BaseModel, metaclass=_ConfigMeta):
    """Base of all configs. Subclasses declare fields with types and constraints."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    type_name: ClassVar[str] = ""
    type_version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        """Serialise as ``{"type", "version", "data"}``."""
        if not self.type_name:
            raise ConfigError(f"{type(self).__name__} is not registered with @config_type; it cannot be serialised")
        return {"type": self.type_name, "version": self.type_version, "data": self.model_dump(mode="json")}

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed, validated again."""
        return type(self)(**{**self.model_dump(), **changes})


def load_config(doc: Any, *, where: str = "config") -> Config:
    """Load a config serialised by :meth:`Config.to_dict`, only through the registry."""
    if not isinstance(doc, dict) or set(doc) != {"type", "version", "data"}:
        raise ConfigError(f"{where}: expected an object with keys 'type', 'version', 'data'")
    cls = CONFIG_TYPES.get(doc["type"], where=f"{where}.type")
    if doc["version"] != cls.type_version:
        raise ConfigError(f"{where}.version: {cls.__name__} is at version {cls.type_version}; got {doc['version']!r}")
    if not isinstance(doc["data"], dict):
        raise ConfigError(f"{where}.data: expected an object")
    return cls(**doc["data"])
