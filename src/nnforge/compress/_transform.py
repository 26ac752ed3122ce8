"""The transform contract: ``apply_(model, config, filter=None) -> TransformReport``.

A transform changes a model in place, dispatched on the type of its config to a registered handler,
and reports per module what changed (bytes before/after, error introduced) and which modules it did
not handle and why. Nothing is skipped silently.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from torch import nn

from nnforge.config import CONFIG_TYPES, Config, load_config
from nnforge.errors import ConfigError

_T = TypeVar("_T", bound=tuple[Any, ...])

__all__ = ["ModuleChange", "TransformReport", "ModuleFilter", "TransformSpec", "register_transform", "apply_",
           "transform_spec", "transform_types", "needs_calibration", "load_transform_config", "tensor_bytes",
           "relative_error", "set_child", "module_names", "candidates", "replace_all", "alias_note"]

ModuleFilter = Callable[[str, nn.Module], bool]
Handler = Callable[..., "TransformReport"]


@dataclass(frozen=True)
class TransformSpec:
    """What the registry knows about the transform of one config class.

    Args:
        config: the config class (registered with ``@config_type``; its presets, subclasses, share the spec).
        apply: ``apply(model, config, filter, **inputs) -> TransformReport``.
        kind: what it is, so that a recipe step accepts its own kind only: ``"quantize"`` (the ``quantize``
            step takes any of these), ``"adapt"``, ``"qat"``, …
        needs_data: ``needs_data(config)``: whether ``apply`` needs ``calibration=`` batches for this config.
    """

    config: type[Config]
    apply: Handler
    kind: str = "transform"
    needs_data: Callable[[Any], bool] = field(default=lambda config: False)


_HANDLERS: dict[type[Config], TransformSpec] = {}


@dataclass
class ModuleChange:
    """What a transform did to one module."""

    name: str
    kind: str
    bytes_before: int
    bytes_after: int
    error: float  # relative Frobenius error of the weight, ||W - W'|| / ||W||
    detail: str = ""
    aliases: list[str] = field(default_factory=list)  # the other names the same module is registered under


@dataclass
class TransformReport:
    """Per-module changes and the modules left alone, with the reason for each."""

    method: str
    config: dict[str, Any]
    changed: list[ModuleChange] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def bytes_before(self) -> int:
        return sum(c.bytes_before for c in self.changed)

    @property
    def bytes_after(self) -> int:
        return sum(c.bytes_after for c in self.changed)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "config": self.config, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "changed": [asdict(c) for c in self.changed],
                "skipped": [{"module": n, "reason": r} for n, r in self.skipped]}


def weight_holders(model: nn.Module) -> dict[int, list[str]]:
    """``id(weight parameter) -> names of the modules holding it``: a list of two or more is a tie."""
    holders: dict[int, list[str]] = {}
    for n, m in model.named_modules():
        w = m._parameters.get("weight") if n else None
        if w is not None:
            holders.setdefault(id(w), []).append(n)
    return holders


def drop_partial_ties(model: nn.Module, targets: list[_T], report: TransformReport) -> list[_T]:
    """``targets`` (tuples starting with ``(name, module)``) without the modules whose weight is tied to a module
    that is not a target: quantizing one side of a tie (an LM head sharing the token embedding) would store the
    matrix twice, the other side keeping the float copy. Those are reported as skipped."""
    holders = weight_holders(model)
    chosen = {t[0] for t in targets}
    keep = []
    for t in targets:
        others = [h for h in holders.get(id(t[1].weight), []) if h != t[0]]
        if others and not set(others) <= chosen:
            report.skipped.append((t[0], f"weight tied with {others[0]}, which is not quantized: left in fp32 "
                                         "(quantizing one side would store the matrix twice)"))
        else:
            keep.append(t)
    return keep


def module_names(model: nn.Module) -> dict[int, list[str]]:
    """``id(module) -> every name it is registered under``: a module reused as ``self.b = self.a`` has two
    (``named_modules()`` lists it once, under its first name)."""
    names: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(n)
    return names


@functools.lru_cache(maxsize=256)
def _attributes_read(cls: Any) -> frozenset[str]:
    """Names ``x`` for which ``cls.forward``'s source reads ``self.x.weight`` or ``self.x.bias``."""
    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return frozenset()
    return frozenset(re.findall(r"self\.(\w+)\.(?:weight|bias)\b", src))


def _read_directly(model: nn.Module) -> dict[int, str]:
    """``id(module) -> why``: modules whose parent reads their tensors instead of (or besides) calling them, so
    that replacing them breaks the parent: ``nn.MultiheadAttention`` passes ``out_proj.weight`` to
    ``F.multi_head_attention_forward`` and never calls ``out_proj``; ``nn.TransformerEncoderLayer`` reads
    ``linear1.weight`` for its fast path. Found by reading each parent class's ``forward`` source."""
    out: dict[int, str] = {}
    for n, m in model.named_modules():
        cls: Any = type(m)
        read = _attributes_read(cls) if m._modules else frozenset()
        for child_name, child in m.named_children():
            if child_name in read:
                never = (f" and never calls {child_name}" if isinstance(m, nn.MultiheadAttention) else "")
                out[id(child)] = (f"{n or 'the model'} ({type(m).__name__}) reads {child_name}.weight directly in its "
                                  f"forward{never}: a packed replacement has no .weight, so it is left as is")
    return out


def candidates(model: nn.Module, filter: ModuleFilter | None, report: TransformReport,
               handled: tuple[type[nn.Module], ...], what: str) -> list[tuple[str, nn.Module, list[str]]]:
    """``(name, module, other names)`` for every submodule, once, that a transform may replace.

    Raises ``ConfigError`` when the model itself is one of the ``handled`` layer types (a root module cannot be
    replaced in place). A module the ``filter`` admits under some of its names but not all, one whose parent
    reads its weight directly (the out_proj of ``nn.MultiheadAttention``), or a layer class with a
    ``transform_note`` (an already-compressed layer whose weight is a buffer, which no parameter scan would
    notice) that the transform does not handle, is reported as skipped.
    """
    if isinstance(model, handled):
        raise ConfigError(f"{what}: the model itself is a {type(model).__name__}, and a root module cannot be "
                          f"replaced in place; wrap it first: model = nn.Sequential(layer) (then use model[0])")
    names, direct = module_names(model), _read_directly(model)
    out = []
    for name, mod in model.named_modules():
        if not name:
            continue
        others = [n for n in names[id(mod)] if n != name]
        if filter is not None:
            admitted = [filter(n, mod) for n in (name, *others)]
            if not any(admitted):
                continue
            if not all(admitted):
                left = [n for n, ok in zip((name, *others), admitted, strict=True) if not ok]
                report.skipped.append((name, f"the same module is also registered as {left[0]}, which the filter "
                                             "leaves out: left as is (a module cannot be replaced under one name only)"))
                continue
        if id(mod) in direct and isinstance(mod, handled):
            report.skipped.append((name, direct[id(mod)]))
            continue
        note = getattr(type(mod), "transform_note", None)
        if note and not isinstance(mod, handled):  # an already-compressed layer holds buffers, not parameters
            report.skipped.append((name, f"{type(mod).__name__}: {note}"))
            continue
        out.append((name, mod, others))
    return out


def alias_note(others: list[str]) -> str:
    """The report detail's note for a module registered under other names too ("" when it has none)."""
    return f"; also registered as {', '.join(others)} (the same module under every name)" if others else ""


def replace_all(model: nn.Module, name: str, others: list[str], new: nn.Module) -> None:
    """Put ``new`` under ``name`` and under every other name the replaced module was registered as."""
    for n in (name, *others):
        set_child(model, n, new)


def tensor_bytes(*tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def relative_error(w: Any, approx: Any) -> float:
    """``||w - approx|| / ||w||`` in fp32 (Frobenius)."""
    w = w.detach().float()
    return float((w - approx.float()).norm() / w.norm().clamp_min(1e-12))


def set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``new``."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def register_transform(config_cls: type[Config], *, kind: str = "transform",
                       needs_data: Callable[[Any], bool] | None = None) -> Callable[[Handler], Handler]:
    """Register the handler that applies configs of ``config_cls`` (and of its subclasses, its presets).

    Args:
        kind: ``"quantize"`` for a quantization method: the ``quantize`` recipe step then accepts its config
            by type name; see :class:`TransformSpec`.
        needs_data: ``needs_data(config) -> bool``: whether this config needs calibration batches.
    """

    def decorator(fn: Handler) -> Handler:
        _HANDLERS[config_cls] = TransformSpec(config_cls, fn, kind, needs_data or (lambda config: False))
        return fn

    return decorator


def _spec_for(cls: type) -> TransformSpec | None:
    return next((_HANDLERS[c] for c in cls.__mro__ if c in _HANDLERS), None)


def transform_spec(config: Config) -> TransformSpec:
    """The :class:`TransformSpec` that applies ``config`` (a registered config's subclass uses its parent's)."""
    spec = _spec_for(type(config))
    if spec is None:
        known = ", ".join(sorted(c.__name__ for c in _HANDLERS)) or "none"
        raise ConfigError(f"no transform is registered for {type(config).__name__}; known configs: {known}")
    return spec


def needs_calibration(config: Config) -> bool:
    """Whether applying ``config`` needs ``calibration=`` batches."""
    return bool(transform_spec(config).needs_data(config))


def transform_types(kind: str) -> list[str]:
    """The registered config type names (``@config_type``) whose transform is of ``kind``, sorted."""
    return [name for name, cls in CONFIG_TYPES.items() if (spec := _spec_for(cls)) is not None and spec.kind == kind]


def load_transform_config(doc: Any, kind: str, *, where: str = "config") -> Config:
    """A config of a ``kind`` transform from ``{"type", "version", "data"}``, only through the registry.

    ``version`` may be left out (the type's current version) and ``data`` too (its defaults), so a recipe can
    say ``{type: w8a8, data: {activations: static}}``.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise ConfigError(f"{where}: expected an object with a 'type' (one of {', '.join(transform_types(kind))}), "
                          "and optionally 'version' and 'data'")
    known = transform_types(kind)
    if doc["type"] not in known:
        close = difflib.get_close_matches(doc["type"], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}.type: {doc['type']!r} is not a registered {kind} method{hint}. "
                          f"Known: {', '.join(known) or 'none'}.")
    unknown = sorted(set(doc) - {"type", "version", "data"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected 'type', 'version' and 'data'")
    cls = CONFIG_TYPES.get(doc["type"])
    full = {"type": doc["type"], "version": doc.get("version", cls.type_version), "data": doc.get("data") or {}}
    return load_config(full, where=where)


def apply_(model: nn.Module, config: Config, filter: ModuleFilter | None = None, **inputs: Any) -> TransformReport:
    """Apply the transform that ``config`` describes to ``model`` in place.

    Args:
        model: any module; its submodules are replaced where the transform applies.
        config: a registered transform config (e.g. :class:`~nnforge.compress.Int8WeightOnlyConfig`);
            a subclass of a registered config (a preset) uses its parent's handler.
        filter: ``filter(name, module) -> bool``; modules for which it returns False are left alone.
        inputs: what the handler may need besides the model (``calibration=batches``, ``skeleton=True``
            to build the layers of a saved model without quantizing, ``progress``).
    """
    handler = transform_spec(config).apply
    if not inputs.get("skeleton") and any(p.is_meta for p in model.parameters()):
        raise ConfigError("the model has weights on the meta device (shapes only, no values): load its weights "
                          "first, or build the quantized layers with skeleton=True and then load_state_dict")
    return handler(model, config, filter, **inputs)
