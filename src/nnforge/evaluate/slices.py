"""Slices: named subsets of an evaluation split, so that a rare domain cannot hide inside an average.

Three ways to slice, written the same way in Python and in a suite's YAML:

- ``"class"``: one slice per true class, named ``class:<label>``;
- ``{"meta": "play"}``: one slice per value of a metadata field, named ``play:<value>``;
- ``{"name": "long", "where": "words > 60"}``: a predicate. Conditions are ``FIELD OP VALUE`` joined by
  ``and``; FIELD is ``chars``, ``words`` (of the text), ``confidence`` (the model's top probability),
  ``label`` (true class name), ``pred`` (predicted class name) or ``meta.<key>``; OP is one of
  ``== != < <= > >= in``; VALUE is a number, a word, a quoted string, a ``[list]`` (for ``in``) or another
  FIELD (``label != pred`` is the misclassified examples; quote a class really named so). Nothing is ever
  evaluated as code. In Python a predicate may also be any function
  of ``(outputs, index) -> bool``.

Slices with fewer than ``rare_below`` examples are flagged *rare*: their figures are reported with
intervals, and a suite can still check them.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnforge.errors import ConfigError, DataError
from nnforge.evaluate.outputs import Outputs

__all__ = ["SliceSpec", "Slice", "parse_slice_spec", "check_slice_specs", "build_slices", "slice_table", "RARE_BELOW"]

RARE_BELOW = 30
_OPS: dict[str, Callable[[Any, Any], bool]] = {"==": operator.eq, "!=": operator.ne, "<=": operator.le,
                                               ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_FIELD = r"chars|words|confidence|label|pred|meta\.[A-Za-z_][\w-]*"
_COND = re.compile(rf"^\s*(?P<field>{_FIELD})\s*"
                   r"(?P<op>==|!=|<=|>=|<|>|\bin\b)\s*(?P<value>'[^']*'|\"[^\"]*\"|\[[^\]]*\]|[^\s'\"\[\]]+)\s*$")


@dataclass(frozen=True)
class SliceSpec:
    """One slicing rule (see the module docstring)."""

    by: str  # "class" | "meta" | "where"
    field: str = ""
    name: str = ""
    where: str = ""
    predicate: Callable[[Outputs, int], bool] | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.by == "class":
            return {"by": "class"}
        if self.by == "meta":
            return {"meta": self.field}
        return {"name": self.name, "where": self.where or "<python predicate>"}


@dataclass(frozen=True)
class Slice:
    """A named subset: the example indices it holds and whether it is rare."""

    name: str
    index: np.ndarray
    rare: bool


@dataclass(frozen=True)
class _FieldRef:
    """An unquoted field name on the right of a condition (``label != pred``): that field's value, not a string."""

    name: str


def _parse_value(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return float(text)
    except ValueError:
        return text


def _parse_where(where: str, where_in: str) -> list[tuple[str, str, Any]]:
    conds = []
    for part in re.split(r"\s+and\s+", where.strip()):
        m = _COND.match(part)
        if not m:
            raise ConfigError(f"{where_in}: cannot read the condition {part!r}; write FIELD OP VALUE with FIELD in "
                              "chars, words, confidence, label, pred, meta.<key>, OP in == != < <= > >= in, a VALUE "
                              "with spaces in quotes, and conditions joined by 'and' ('or' is not supported: "
                              "use two slices)")
        value = m["value"]
        if m["op"] == "in":
            parsed: Any = [_parse_value(v) for v in value.strip("[]").split(",")]
        else:
            parsed = _FieldRef(value) if re.fullmatch(_FIELD, value) else _parse_value(value)
        conds.append((m["field"], m["op"], parsed))
    return conds


def parse_slice_spec(raw: Any, where: str = "slices") -> SliceSpec:
    """A :class:`SliceSpec` from its YAML/JSON form (``"class"``, ``{"meta": f}``, ``{"name", "where"}``)."""
    if isinstance(raw, SliceSpec):
        return raw
    if raw == "class" or raw == {"by": "class"}:
        return SliceSpec("class")
    if isinstance(raw, dict) and set(raw) == {"meta"} and isinstance(raw["meta"], str) and raw["meta"]:
        return SliceSpec("meta", field=raw["meta"])
    if isinstance(raw, dict) and set(raw) == {"name", "where"} and all(isinstance(v, str) for v in raw.values()):
        if not re.fullmatch(r"[\w.-]+", raw["name"]):
            raise ConfigError(f"{where}: slice name {raw['name']!r} may hold only letters, digits, '_', '.', '-'")
        _parse_where(raw["where"], where)
        return SliceSpec("where", name=raw["name"], where=raw["where"])
    raise ConfigError(f"{where}: a slice is 'class', {{meta: FIELD}} or {{name: NAME, where: CONDITION}}; got {raw!r}")


def check_slice_specs(specs: list[Any]) -> list[Any]:
    """Validate slice specs (a pydantic field validator for configs that hold them); returns them unchanged."""
    for k, raw in enumerate(specs):
        parse_slice_spec(raw, f"slices[{k}]")
    return specs


def _field_value(out: Outputs, i: int, field: str) -> Any:
    if field in ("chars", "words"):
        if out.texts is None:
            raise DataError(f"slice field {field!r} needs texts, and these outputs have none")
        return len(out.texts[i]) if field == "chars" else len(out.texts[i].split())
    if field == "confidence":
        return float(out.probs[i].max())
    if field in ("label", "pred"):
        k = int(out.labels[i] if field == "label" else out.preds[i])
        return out.label_names[k] if out.label_names else str(k)
    return (out.meta[i] if out.meta else {}).get(field.removeprefix("meta."))


def _target(out: Outputs, i: int, target: Any) -> Any:
    if not isinstance(target, _FieldRef):
        return target
    value = _field_value(out, i, target.name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _text(t: Any) -> str:
    return str(int(t)) if isinstance(t, float) and t.is_integer() else str(t)


def _holds(value: Any, op: str, target: Any) -> bool:
    if value is None:
        return False
    if op == "in":
        return any(_holds(value, "==", t) for t in target)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(target, float):
        return _OPS[op](float(value), target)
    if op in ("==", "!="):
        return _OPS[op](str(value), _text(target))
    raise DataError(f"slice condition: cannot order {value!r} against {target!r} with {op}; "
                    "ordering applies to numbers only")


def build_slices(out: Outputs, specs: Sequence[Any], rare_below: int = RARE_BELOW) -> dict[str, Slice]:
    """Every slice the specs define on ``out`` (``all`` first), with the rare ones flagged."""
    n = len(out)
    slices: dict[str, Slice] = {"all": Slice("all", np.arange(n), n < rare_below)}

    def add(name: str, idx: np.ndarray) -> None:
        if name in slices:
            raise ConfigError(f"two slices are named {name!r}; give predicate slices distinct names")
        slices[name] = Slice(name, idx, len(idx) < rare_below)

    for k, raw in enumerate(specs):
        spec = parse_slice_spec(raw, f"slices[{k}]")
        if spec.by == "class":
            names = out.label_names or [str(c) for c in range(out.num_classes)]
            for c, label in enumerate(names):
                add(f"class:{label}", np.flatnonzero(out.labels == c))
        elif spec.by == "meta":
            values = [(m or {}).get(spec.field) for m in out.meta] if out.meta else []
            if not any(v is not None for v in values):
                have = sorted({key for m in out.meta for key in m}) if out.meta else []
                raise DataError(f"slices[{k}]: no example has metadata field {spec.field!r}; "
                                f"the data has {have or 'no metadata'}")
            for v in sorted({str(v) for v in values if v is not None}):
                add(f"{spec.field}:{v}", np.flatnonzero(np.array([str(x) == v for x in values])))
        elif spec.predicate is not None:
            add(spec.name, np.array([i for i in range(n) if spec.predicate(out, i)], dtype=np.int64))
        else:
            conds = _parse_where(spec.where, f"slices[{k}]")
            keep = [i for i in range(n) if all(_holds(_field_value(out, i, f), op, _target(out, i, v)) for f, op, v in conds)]
            add(spec.name, np.array(keep, dtype=np.int64))
    return slices


def slice_table(out: Outputs, slices: dict[str, Slice], metrics: Sequence[str] = ("accuracy",),
                reference: Outputs | None = None) -> list[dict[str, Any]]:
    """One row per slice: its size, rare flag and each metric (paired metrics need ``reference``)."""
    from nnforge.evaluate.metrics import METRICS

    ms = [METRICS.get(m, where="slice_table") for m in metrics]
    rows = []
    for s in slices.values():
        row: dict[str, Any] = {"slice": s.name, "n": int(len(s.index)), "rare": s.rare}
        sub, ref = out.subset(s.index), reference.subset(s.index) if reference is not None else None
        for m in ms:
            if m.kind == "measured" or (m.kind == "paired" and ref is None):
                continue
            row[m.name] = m(sub, ref) if len(sub) else None
        rows.append(row)
    return rows
