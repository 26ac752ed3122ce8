"""The registry of model architectures that recipes and safetensors checkpoints may name.

An architecture is a factory ``build(**options) -> nn.Module`` with a *task* (what it predicts, which decides the
metrics, slices and OOD features the evaluation steps compute) and the *data kind* it reads. A checkpoint on disk
names its architecture and options in its safetensors metadata; loading looks the name up here, so a file can never
name arbitrary code: only what nnforge or an installed package registered.

Architectures come from three places:

- nnforge's own (``digits-mlp``, ``digits-cnn``, ``char-gpt``), registered when :mod:`nnforge.models` is imported;
- :func:`register`, called by user code (``nnforge.models.register("my-cnn", build_my_cnn, task=...)``);
- Python entry points in the group ``nnforge.models`` of installed distributions, discovered on the first lookup
  and each loaded when its name is first used (so a broken plug-in only fails the recipe that names it, with a
  message naming the distribution and the entry point).

Registration is not thread-safe (do it at import time); lookups are.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, overload

from torch import nn

from nnforge.errors import ConfigError
from nnforge.registry import Registry

__all__ = ["ARCHITECTURES", "DATA_KINDS", "TASKS", "TASK_DATA_KINDS", "ENTRY_POINT_GROUP", "build", "register",
           "unregister", "task_of"]

log = logging.getLogger(__name__)

Factory = Callable[..., nn.Module]

ENTRY_POINT_GROUP = "nnforge.models"
TASK_DATA_KINDS: dict[str, str] = {
    "text-classification": "text-classification",    # texts → classes (predict_proba/embed on texts)
    "image-classification": "array-classification",  # (B, C, H, W) tensors → class logits
    "tabular-classification": "array-classification",  # (B, features) rows → class logits
    "tensor-classification": "array-classification",  # any tensor → class logits (the generic case)
    "char-lm": "char-lm",                            # token ids → next-character logits and loss
}
"""Each task and the kind of dataset it reads by default (:class:`nnforge.data.DatasetInfo.kind`)."""
_NAME = re.compile(r"^[A-Za-z0-9][\w.+-]{0,99}$")


class _Architectures(Registry[Factory]):
    """A :class:`Registry` that also finds architectures published as entry points, lazily."""

    def __init__(self) -> None:
        super().__init__("architecture")
        self._pending: dict[str, metadata.EntryPoint] | None = None  # None: not discovered yet
        self._broken: dict[str, str] = {}  # name → why its entry point failed (the same error every time)

    # --- discovery --------------------------------------------------------------------------------------------

    def refresh_entry_points(self) -> None:
        """Forget what was discovered (loaded architectures stay) and look at the installed packages again."""
        self._pending = None
        self._broken.clear()

    def _discover(self) -> dict[str, metadata.EntryPoint]:
        if self._pending is None:
            self._pending = {}
            try:
                found = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
            except Exception as exc:  # a damaged dist-info must not break nnforge's own architectures
                log.warning("could not read the %r entry points of the installed packages: %s", ENTRY_POINT_GROUP, exc)
                found = []
            for ep in found:
                if ep.name in self._entries or ep.name in self._pending:
                    log.warning("entry point %r of %s (group %s) is ignored: an architecture of that name is "
                                "already registered", ep.name, _dist(ep), ENTRY_POINT_GROUP)
                    continue
                self._pending[ep.name] = ep
        return self._pending

    def _resolve(self, name: object) -> None:
        """Load ``name``'s entry point if it has one not loaded yet."""
        if not isinstance(name, str) or name in self._entries:
            return
        if name in self._broken:
            raise ConfigError(self._broken[name])
        ep = self._discover().pop(name, None)
        if ep is None:
            return
        try:
            obj = ep.load()
        except Exception as exc:  # any error of a third-party import: reported, never a traceback
            self._broken[name] = (f"architecture {name!r}: the entry point '{ep.name} = {ep.value}' of {_dist(ep)} "
                                  f"(group {ENTRY_POINT_GROUP!r}) could not be loaded: {type(exc).__name__}: {exc}. "
                                  f"Fix that package or uninstall it.")
            raise ConfigError(self._broken[name]) from None
        if name in self._entries:  # its module registered it (with its task) when imported
            return
        if not callable(obj):
            self._broken[name] = (f"architecture {name!r}: the entry point '{ep.name} = {ep.value}' of {_dist(ep)} "
                                  f"names a {type(obj).__name__}, not a factory returning an nn.Module; point it at "
                                  "the factory, or at a module that calls nnforge.models.register")
            raise ConfigError(self._broken[name])
        task = getattr(obj, "nnforge_task", "tensor-classification")
        register(name, obj, task=task, data_kind=getattr(obj, "nnforge_data_kind", None))

    # --- lookups (each first discovers the entry points) --------------------------------------------------------

    def get(self, name: str, *, where: str = "") -> Factory:
        self._resolve(name)
        return super().get(name, where=where)

    def __contains__(self, name: object) -> bool:
        self._resolve(name)
        return name in self._entries

    def names(self) -> list[str]:
        """Registered names and the entry points not loaded yet, sorted."""
        return sorted({*self._entries, *self._discover()})

    def unknown_message(self, name: object, *, where: str = "") -> str:
        self._discover()
        known = self.names()
        import difflib

        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        loc = f"{where}: " if where else ""
        return (f"{loc}unknown {self.kind} {name!r}{hint}. Known: {', '.join(known) or 'none'}. Register your own "
                "with nnforge.models.register (see docs/own-model.md).")

    def items(self) -> Iterator[tuple[str, Factory]]:
        for name in list(self._discover()):
            try:
                self._resolve(name)
            except ConfigError as exc:
                log.warning("%s", exc)
        return super().items()

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _remove(self, name: str) -> None:
        self._entries.pop(name, None)


def _dist(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"distribution '{dist.name} {dist.version}'" if dist is not None else "an unknown distribution"


ARCHITECTURES = _Architectures()
DATA_KINDS: dict[str, str] = {}
"""The kind of dataset (``char-lm``, ``array-classification``, …) each architecture trains on, so that a recipe
pairing a model with data it cannot read is refused before it runs."""
TASKS: dict[str, str] = {}
"""The task of each architecture (a key of :data:`TASK_DATA_KINDS`); see :func:`task_of`."""


@overload
def register(name: str, factory: Factory, *, task: str = ..., data_kind: str | None = ...,
             replace: bool = ...) -> Factory: ...
@overload
def register(name: str, factory: None = ..., *, task: str = ..., data_kind: str | None = ...,
             replace: bool = ...) -> Callable[[Factory], Factory]: ...
def register(name: str, factory: Factory | None = None, *, task: str = "tensor-classification",
             data_kind: str | None = None, replace: bool = False) -> Factory | Callable[[Factory], Factory]:
    """Register an architecture: ``factory(**options)`` builds the ``nn.Module`` a recipe's
    ``model.architecture: NAME`` (and ``model.options``) names. Usable as a decorator when ``factory`` is left out.

    Args:
        name: the name recipes and checkpoints use (letters, digits, ``._+-``).
        factory: builds the module from the recipe's ``model.options``; a classifier returns logits ``(B, C)``.
        task: what the model predicts, one of :data:`TASK_DATA_KINDS` (``"image-classification"``,
            ``"tabular-classification"``, ``"tensor-classification"``, ``"text-classification"``, ``"char-lm"``); it
            decides the metrics, slices and OOD features of the ``evaluate`` and ``gate`` steps.
        data_kind: the kind of dataset it reads (default: the task's, e.g. ``array-classification`` for images).
        replace: allow replacing an architecture already registered under ``name``.

    Raises:
        ConfigError: a bad name, task or data kind, a factory that is not callable, or a name already registered
            (without ``replace=True``).
    """
    if factory is None:
        return lambda f: register(name, f, task=task, data_kind=data_kind, replace=replace)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"register: the architecture name must be letters, digits and ._+- (at most 100, starting "
                          f"with a letter or digit); got {name!r}")
    if not callable(factory):
        raise ConfigError(f"register({name!r}): the factory must be callable (options → nn.Module); got "
                          f"{type(factory).__name__}")
    if task not in TASK_DATA_KINDS:
        raise ConfigError(f"register({name!r}): unknown task {task!r}; known: {', '.join(sorted(TASK_DATA_KINDS))}")
    kind = data_kind or TASK_DATA_KINDS[task]
    if kind not in set(TASK_DATA_KINDS.values()):
        raise ConfigError(f"register({name!r}): unknown data_kind {kind!r}; known: "
                          f"{', '.join(sorted(set(TASK_DATA_KINDS.values())))}")
    ARCHITECTURES._discover()  # an entry point of the same name is shadowed by an explicit registration
    if name in ARCHITECTURES._entries and ARCHITECTURES._entries[name] is not factory and not replace:
        raise ConfigError(f"register: architecture {name!r} is already registered (task "
                          f"{TASKS.get(name, '?')}); pass replace=True to replace it, or choose another name")
    ARCHITECTURES._remove(name)
    ARCHITECTURES.add(name, factory)
    if ARCHITECTURES._pending is not None:
        ARCHITECTURES._pending.pop(name, None)
    DATA_KINDS[name], TASKS[name] = kind, task
    return factory


def unregister(name: str) -> None:
    """Remove the architecture ``name`` (a test's or a notebook's); unknown names are an error.

    Raises:
        ConfigError: no architecture of that name is registered.
    """
    if name not in ARCHITECTURES._entries:
        raise ConfigError(ARCHITECTURES.unknown_message(name, where="unregister"))
    ARCHITECTURES._remove(name)
    DATA_KINDS.pop(name, None)
    TASKS.pop(name, None)


def task_of(architecture: str | None) -> str:
    """The task of a registered architecture; a recipe without one (a pretrained text model) is a text classifier."""
    if architecture is None:
        return "text-classification"
    ARCHITECTURES.get(architecture, where="model.architecture")  # loads an entry point on first use
    if architecture in TASKS:
        return TASKS[architecture]
    kind = DATA_KINDS.get(architecture)
    return "char-lm" if kind == "char-lm" else "text-classification" if kind == "text-classification" \
        else "tensor-classification"


def build(name: str, **options: Any) -> nn.Module:
    """Build the registered architecture ``name`` with ``options``."""
    factory = ARCHITECTURES.get(name, where="model.architecture")
    return factory(**options)
