"""The recipe format: a validated YAML file of model, data, ordered steps and metadata.

```yaml
name: quickstart
seed: 0
model: {name: minilm}                   # or {hf_dir: path} or {safetensors: file, architecture: char-gpt}
data: {dataset: shakespeare-genre, options: {passages_per_play: 60}}
steps:
  - baselines
  - finetune: {epochs: 4, lora: {r: 8}}
  - quantize: {scheme: int8}
  - evaluate
  - report
metadata: {intended_purpose: "...", owner: "...", risk_notes: ["..."]}
```

Every problem in a recipe is reported at once, each with its path (``steps[2].bits``) and what is
allowed. A recipe can only name registered steps, datasets and architectures — never code.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from nnforge.config import Config, describe_validation_error
from nnforge.errors import ConfigError, not_utf8

__all__ = ["ModelSpec", "DataSpec", "Metadata", "StepSpec", "Recipe", "parse_recipe", "load_recipe", "apply_overrides"]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Strict):
    """Where the model comes from: a packaged ``name``, an ``hf_dir``, or a registered ``architecture``
    (initialised from ``seed``, or from a ``safetensors`` file of weights)."""

    name: str | None = None
    hf_dir: str | None = None
    safetensors: str | None = None
    architecture: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [k for k in ("name", "hf_dir", "architecture") if getattr(self, k)]
        if self.safetensors and not self.architecture:
            raise ValueError("a safetensors file needs 'architecture' (a registered architecture name)")
        if len(given) != 1:
            raise ValueError(f"give exactly one of name, hf_dir, safetensors (with architecture) or architecture "
                             f"(got {given or 'none'})")
        # names are checked here, so that a typo fails before a run folder or ledger event exists
        if self.architecture:
            import nnforge.moe  # noqa: F401  (registers "moe-gpt": models cannot import the moe capability)
            from nnforge.models import ARCHITECTURES

            if self.architecture not in ARCHITECTURES:
                raise ValueError(ARCHITECTURES.unknown_message(self.architecture, where="architecture"))
        if self.name:
            from nnforge.models import PRETRAINED

            if self.name not in PRETRAINED:
                raise ValueError(PRETRAINED.unknown_message(self.name, where="name"))
        return self


class DataSpec(_Strict):
    """The dataset (a registered name), its options, and which splits play which role."""

    dataset: str
    options: dict[str, Any] = Field(default_factory=dict)
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str = "test"
    max_train: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _known_dataset(self) -> DataSpec:
        from nnforge.data import DATASETS

        if self.dataset not in DATASETS:
            raise ValueError(DATASETS.unknown_message(self.dataset, where="dataset"))
        allowed = DATASETS.get(self.dataset).options
        bad = sorted(set(self.options) - set(allowed))
        if bad:
            import difflib

            close = difflib.get_close_matches(bad[0], allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"options: dataset {self.dataset!r} has no option {bad[0]!r}{hint}; "
                             f"allowed: {', '.join(allowed) or 'none'}")
        return self


_Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)]
_Item = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class Metadata(_Strict):
    """Facts about purpose and responsibility that the run cannot measure; ``nnforge docs`` puts each one in the
    model card, the instructions for use (Art. 13) and the Annex IV draft, cited to the run's start, and marks
    what is left empty TO BE COMPLETED BY THE PROVIDER (docs/ledger.md lists where each field goes).

    Every field is optional; texts are stripped, lists hold non-empty texts (at most 50).
    """

    intended_purpose: _Text = ""
    owner: _Text = ""
    contact: _Text = ""
    licence: _Text = ""
    intended_users: list[_Item] = Field(default_factory=list, max_length=50)
    out_of_scope_uses: list[_Item] = Field(default_factory=list, max_length=50)
    risk_notes: list[_Item] = Field(default_factory=list, max_length=50)
    oversight_measures: list[_Item] = Field(default_factory=list, max_length=50)
    post_market_monitoring: _Text = ""
    record_inputs: bool = Field(default=False, description="the provider allows the served model's raw inputs in "
                                "the ledger (nnforge serve --record-inputs); otherwise only their sha256")


@dataclass(frozen=True)
class StepSpec:
    """One step: its registered name and its validated config."""

    name: str
    config: Config


@dataclass(frozen=True)
class Recipe:
    """A validated recipe."""

    name: str
    description: str
    seed: int
    model: ModelSpec
    data: DataSpec
    steps: tuple[StepSpec, ...]
    metadata: Metadata
    source: str  # the YAML text after overrides, as run
    path: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "seed": self.seed,
                "model": self.model.model_dump(), "data": self.data.model_dump(),
                "steps": [{"name": s.name, "config": s.config.model_dump(mode="json")} for s in self.steps],
                "metadata": self.metadata.model_dump(), "sha256": self.sha256, "path": self.path}


class _Top(_Strict):
    name: str = "recipe"
    description: str = ""
    seed: int = Field(0, ge=0)
    model: ModelSpec
    data: DataSpec
    steps: list[Any] = Field(min_length=1)
    metadata: Metadata = Field(default_factory=Metadata)


def _step_entry(i: int, entry: Any) -> tuple[str | None, dict[str, Any], list[str]]:
    where = f"steps[{i}]"
    if isinstance(entry, str):
        return entry, {}, []
    if isinstance(entry, dict) and len(entry) == 1:
        (name, cfg), = entry.items()
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, dict):
            return None, {}, [f"{where}: the options of step {name!r} must be a mapping; got {type(cfg).__name__}"]
        return str(name), cfg, []
    return None, {}, [f"{where}: expected a step name or a one-key mapping like '- quantize: {{scheme: int8}}'"]


def parse_recipe(doc: Any, *, source: str = "", path: str | None = None) -> Recipe:
    """Validate a parsed YAML document; raises one ConfigError listing every problem."""
    from nnforge.recipes.steps import STEPS

    if not isinstance(doc, dict):
        raise ConfigError(f"{path or 'recipe'}: the top level must be a mapping with model, data and steps")
    problems: list[str] = []
    top: _Top | None = None
    try:
        top = _Top(**doc)
    except ValidationError as exc:
        problems += describe_validation_error(exc)
    steps: list[StepSpec] = []
    for i, entry in enumerate(doc.get("steps") or [] if isinstance(doc.get("steps"), list) else []):
        name, cfg, errs = _step_entry(i, entry)
        problems += errs
        if name is None:
            continue
        if name not in STEPS:
            problems.append(f"steps[{i}]: " + STEPS.unknown_message(name))
            continue
        config_cls = STEPS.get(name).Config
        try:
            steps.append(StepSpec(name, config_cls.model_validate(cfg)))
        except ValidationError as exc:
            problems += describe_validation_error(exc, prefix=f"steps[{i}]")
    problems += _number_problems(doc)
    if top is not None and not problems:
        problems += _model_fits_data(top.model, top.data)
    if problems or top is None:
        head = f"{path}: " if path else ""
        raise ConfigError(f"{head}the recipe has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return Recipe(top.name, top.description, top.seed, top.model, top.data, tuple(steps), top.metadata,
                  source, path)


# the largest value a recipe may give: counts of steps, epochs, rows or repeats beyond these cannot finish (or
# overflow the int64 they become in torch and SQLite); any other number must stay within MAX_NUMBER
MAX_NUMBER = 10**12
MAX_SEED = 2**63 - 1
MAXIMA: dict[str, int] = {"seed": MAX_SEED, "max_steps": 10**8, "warmup_steps": 10**8, "eval_every": 10**8,
                          "checkpoint_every": 10**8, "log_every": 10**8, "epochs": 10**5, "repeats": 10**5,
                          "batch_size": 2**20, "max_train": 10**9, "passages_per_play": 10**6,
                          "eval_batches": 10**6, "grad_accum": 10**4, "patience": 10**5}


def _number_problems(doc: Any, where: str = "") -> list[str]:
    """Numbers beyond what a run can use (``--set max_steps=10000000000000000000000000000000``), each named by its
    path with the allowed range, in the form every parameter error takes."""
    if isinstance(doc, dict):
        if where.startswith("steps[") and where.endswith("]") and "." not in where and len(doc) == 1:
            doc = next(iter(doc.values()))  # "- train: {...}": the options are named steps[i].<option>
            return _number_problems(doc, where) if isinstance(doc, dict) else []
        return [p for k, v in doc.items() for p in _number_problems(v, f"{where}.{k}" if where else str(k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _number_problems(v, f"{where}[{i}]")]
    if isinstance(doc, bool) or not isinstance(doc, (int, float)):
        return []
    name = where.rsplit(".", 1)[-1]
    limit = MAXIMA.get(name, MAX_NUMBER)
    if abs(doc) <= limit:  # NaN and infinity are the field's own validator's to refuse
        return []
    shown = f"{doc:.3g}" if len(str(doc)) > 20 else repr(doc)
    return [f"The {where!r} parameter must be a number in the range [-{limit}, {limit}]. Got {shown} instead."
            if name not in MAXIMA else f"The {where!r} parameter must be at most {limit}. Got {shown} instead."]


def _model_fits_data(model: ModelSpec, data: DataSpec) -> list[str]:
    """A model that cannot read the dataset (a character LM on digit images) is a recipe problem."""
    from nnforge.data import DATASETS
    from nnforge.models import DATA_KINDS

    have = DATASETS.get(data.dataset).kind
    want = DATA_KINDS.get(model.architecture) if model.architecture else "text-classification"
    if want is None or want == have:
        return []
    fits = sorted(n for n in DATASETS.names() if DATASETS.get(n).kind == want)
    what = f"architecture {model.architecture!r}" if model.architecture else "a pretrained text classifier"
    return [f"data.dataset: {what} reads {want} data, but {data.dataset!r} is {have}; use one of {', '.join(fits)}"]


def _set_path(doc: Any, dotted: str, value: Any) -> None:
    """Set ``a.b[2].c`` in nested dicts/lists; a step is addressed by index (``steps[1].epochs``)."""
    import re

    parts: list[str | int] = []
    for token in dotted.split("."):
        m = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", token)
        if not m or (not m.group(1) and not m.group(2)):
            raise ConfigError(f"--set {dotted}: cannot parse the key")
        if m.group(1):
            parts.append(m.group(1))
        parts += [int(x) for x in re.findall(r"\[(\d+)\]", m.group(2))]
    cur = doc
    for j, part in enumerate(parts):
        last = j == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(cur, list) or part >= len(cur):
                raise ConfigError(f"--set {dotted}: index [{part}] does not exist")
            if isinstance(cur[part], str) and not last:  # "- evaluate" → "- evaluate: {}"
                cur[part] = {cur[part]: {}}
            if isinstance(cur[part], dict) and len(cur[part]) == 1 and dotted.startswith("steps") and not last:
                (k, v), = cur[part].items()
                if v is None:
                    cur[part][k] = {}
                cur = cur[part][k]
                continue
            if last:
                cur[part] = value
            else:
                cur = cur[part]
        else:
            if not isinstance(cur, dict):
                raise ConfigError(f"--set {dotted}: {part!r} is not inside a mapping")
            if last:
                cur[part] = value
            else:
                cur = cur.setdefault(part, {})


def apply_overrides(doc: Any, overrides: list[str]) -> Any:
    """Apply ``key=value`` overrides (values parsed as YAML) to a parsed recipe document."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. steps[1].epochs=2")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_path(doc, key.strip(), value)
    return doc


def builtin_dir() -> Path:
    return Path(__file__).parent / "builtin"


def resolve_recipe_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a built-in recipe."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.is_file():
            raise ConfigError(f"{p}: no such recipe file")
        return p
    cand = builtin_dir() / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    if p.is_file():
        return p
    names = sorted(f.stem for f in builtin_dir().glob("*.yaml"))
    import difflib

    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"no recipe file or built-in recipe called {name_or_path!r}{hint}. Built-ins: {', '.join(names)}")


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe from a path or a built-in name."""
    path = resolve_recipe_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{not_utf8(path, exc)}; save the recipe as UTF-8") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: malformed YAML ({getattr(exc, 'problem', None) or exc}). "
                          "Check indentation and quoting there.") from None
    if overrides:
        doc = apply_overrides(doc, overrides)
        text = yaml.safe_dump(doc, sort_keys=False)
    return parse_recipe(doc, source=text, path=str(path))
