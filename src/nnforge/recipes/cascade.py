"""Cascades of finished runs: the ``run`` tier kind, and :func:`evaluate_cascade` (what ``nnforge cascade`` runs).

``run``: a finished nnforge run's model in this process, with the OOD guard its evaluate step saved.

    {"name": "small", "kind": "run", "options": {"run": "<run-id>", "variant": "int8"}}

What a cascade config can say without Python: the run is loaded as :func:`nnforge.load_run` loads it (its files
checked against the ledger that recorded it), the variant runs in PyTorch (``"<variant>-native"``: an int8
BERT-family encoder in nnforge's native runtime), and the guard (``ood: true``, the default) flags what it finds
out of the run's range, its threshold re-chosen on this variant's features of the run's validation inputs as
``nnforge serve`` does; a flagged answer goes up. Inputs are what the run's model reads: texts for a text
classifier, flat float rows (a list or an array) for another.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.deploy.cascade import (
    ANSWERED,
    Cascade,
    CascadeConfig,
    TierAnswer,
    choose_thresholds,
    oracle_answers,
    register_tier,
)
from nnforge.errors import ConfigError, DataError, ModelError

__all__ = ["RunTier", "RunTierOptions", "evaluate_cascade"]


@config_type("deploy.cascade.run")
class RunTierOptions(Config):
    """Options of a ``run`` tier."""

    run: str = Field(..., min_length=1, description="the run's folder, or its id under runs_dir")
    variant: str | None = Field(None, description="a saved variant (default: the run's final one); "
                                                  "'<variant>-native' runs it in the native runtime")
    runs_dir: str = Field("runs", description="where run ids are looked up")
    ledger: str | None = Field(None, description="the ledger that recorded the run (default: the run's own)")
    ood: bool = Field(True, description="flag what the run's saved OOD guard finds out of range (it goes up)")
    batch_size: int = Field(64, ge=1, le=4096, description="inputs per forward pass")


@register_tier("run")
class RunTier:
    """A finished run's model variant.

    Args:
        backend: a :class:`nnforge.deploy.serve.TorchBackend` (or any backend giving logits and the guard's
            features) of the variant.
        labels: class names, in logit order.
        guard: an :class:`nnforge.explain.OODGuard` reading the backend's features, or None.
        batch_size: inputs per forward pass.
    """

    Options = RunTierOptions

    def __init__(self, backend: Any, labels: Sequence[str], guard: Any = None, *, batch_size: int = 64) -> None:
        self.backend, self.labels, self.guard, self.batch_size = backend, [str(x) for x in labels], guard, batch_size
        self.facts: dict[str, Any] = {}

    @classmethod
    def from_options(cls, options: RunTierOptions, *, run: Any = None) -> RunTier:
        """Load the run named by ``options`` (or use ``run``, an already loaded :class:`nnforge.recipes.Run`)."""
        from nnforge.deploy.serve import TorchBackend
        from nnforge.recipes.runs import load_run
        from nnforge.recipes.serve_run import guard_for, sample_inputs

        loaded = run if run is not None else load_run(options.run, options.runs_dir, ledger=options.ledger,
                                                      use="cascade")
        name = options.variant or loaded.config.get("final_variant") or next(iter(loaded.variants))
        sample = sample_inputs(loaded)[0]
        shape = None if isinstance(sample[0], str) else (len(sample[0]),)
        backend = TorchBackend(loaded.model(name), name, shape=shape)
        guard, facts = guard_for(loaded, backend, sample) if options.ood else (None, {"ood_guard": "off"})
        labels = loaded.label_names or [str(i) for i in range(int(backend(sample[:1]).logits.shape[-1]))]
        tier = cls(backend, labels, guard, batch_size=options.batch_size)
        tier.facts = {"run": loaded.run_id, "variant": name, **facts}
        return tier

    def answer(self, inputs: Any, previous: Sequence[TierAnswer | None]) -> list[TierAnswer]:
        n = len(previous)
        out: list[TierAnswer] = []
        for start in range(0, n, self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            result = self.backend(chunk if isinstance(chunk, list) else torch.as_tensor(chunk, dtype=torch.float32))
            probs = torch.softmax(result.logits.float(), dim=-1)
            if probs.shape != (len(chunk), len(self.labels)):
                raise ModelError(f"run tier: the model gave logits of shape {tuple(result.logits.shape)} for "
                                 f"{len(chunk)} inputs; expected ({len(chunk)}, {len(self.labels)})")
            flags = self.guard.check(**result.features).is_ood.tolist() if self.guard is not None else [False] * len(chunk)
            conf, top = probs.max(dim=-1)
            for p, c, j, flag in zip(probs.tolist(), conf.tolist(), top.tolist(), flags, strict=True):
                out.append(TierAnswer(self.labels[j], c, "flagged" if flag else ANSWERED,
                                      dict(zip(self.labels, p, strict=True))))
        return out


def _key(x: Any) -> Any:
    """What identifies an input for the simulated person: a text itself, a row by its float32 bytes."""
    return x if isinstance(x, str) else np.asarray(x, dtype=np.float32).tobytes()


def _split(run: Any, split: str, limit: int | None) -> tuple[Any, list[str]]:
    """The inputs of ``split`` of the run's data (texts, or an (N, features) float array) and their label names."""
    from nnforge.recipes.suites import run_data

    data = run_data(run.config, split)
    names = run.label_names
    if hasattr(data, "texts"):
        inputs: Any = list(data.texts)
        ys = [int(y) for y in list(data.labels)]
    else:
        x, y = data
        inputs = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        ys = [int(v) for v in np.asarray(y).tolist()]
    if limit is not None:
        inputs, ys = inputs[:limit], ys[:limit]
    if not len(ys):
        raise DataError(f"run {run.run_id}: the {split!r} split is empty")
    return inputs, [names[y] if names else str(y) for y in ys]


def evaluate_cascade(config: CascadeConfig, data_run: Any, *, split: str = "test", choose_on: str | None = "val",
                     rule: Literal["most-accurate", "cheapest"] = "most-accurate", limit: int | None = None,
                     runs_dir: str = "runs", ledger: str | None = None, actor: str | None = None,
                     record: bool = True) -> dict[str, Any]:
    """Run a cascade over one split of a finished run's data and report what each tier cost and got right.

    Every ``human`` tier is simulated by the true labels (a reviewer who is always right, answering at once),
    so the report's accuracy is what the cascade would reach with reviewers; its ``share`` is how many inputs
    a person would have seen. With ``choose_on`` (default ``"val"``), every tier's ``min_confidence`` is chosen
    first on that split by :func:`~nnforge.deploy.cascade.choose_thresholds` (``rule``), keeping the caps; with
    None the config's thresholds are used as they are. Each model tier also answers the whole split alone
    (``alone``: its accuracy by itself).

    Args:
        config: the cascade (``run`` tiers load their runs; ``http``/``openai`` tiers are called).
        data_run: the run (folder, id or loaded :class:`~nnforge.recipes.Run`) whose data and labels are used.
        limit: at most this many inputs of each split (the first ones).
        record: add a ``cascade.evaluated`` event to the run's ledger (``actor``: who; default the OS user).

    Returns:
        JSON-ready: ``config`` (with the thresholds used), ``choice`` (validation accuracy and shares),
        ``result`` (:meth:`CascadeResult.to_dict`: accuracy, per tier asked/answered shares, accuracy and
        milliseconds per input), ``alone``, ``data`` and ``tiers`` (what each run tier loaded).

    Raises:
        ConfigError: a split the run has not; a ``human`` tier that is not the last.
        DataError: an input of both splits with two different labels (the simulated person could not tell).
    """
    from nnforge.recipes.runs import Run, load_run

    run = data_run if isinstance(data_run, Run) else load_run(data_run, runs_dir, ledger=ledger, actor=actor,
                                                             use="cascade")
    humans = [t.name for t in config.tiers if t.kind == "human"]
    if any(t.kind == "human" for t in config.tiers[:-1]):
        raise ConfigError(f"cascade: a human tier must be the last one; tiers: {config.names}")
    test_x, test_y = _split(run, split, limit)
    val_x, val_y = _split(run, choose_on, limit) if choose_on else ([], [])
    truth: dict[Any, str] = {}
    for x, y in [*zip(val_x, val_y, strict=True), *zip(test_x, test_y, strict=True)]:
        if truth.setdefault(_key(x), y) != y:
            raise DataError(f"run {run.run_id}: an input appears with two labels ({truth[_key(x)]!r} and {y!r}); "
                            "the simulated reviewer cannot answer it")
    objects: dict[str, dict[str, Any]] = {h: {"oracle": lambda xs: [truth[_key(x)] for x in xs]} for h in humans}
    for t in config.tiers:
        if t.kind == "run" and t.options.get("run") in (run.run_id, str(run.path)):
            objects[t.name] = {"run": run}  # the data run itself: loaded once
    t0 = time.perf_counter()
    with Cascade(config, objects) as cascade:
        choice_doc: dict[str, Any] | None = None
        if choose_on:
            answers = cascade.answer_all(val_x, skip=humans) | {h: oracle_answers(val_y) for h in humans}
            choice = choose_thresholds(config, answers, val_y, rule=rule)
            cascade.config = config = choice.config
            choice_doc = {"split": choose_on, "inputs": len(val_y),
                          **{k: v for k, v in choice.to_dict().items() if k != "config"}}
        cascade.reset()
        result = cascade.run(test_x, test_y)
        alone = {name: float(np.mean([a.label == y for a, y in zip(got, test_y, strict=True)]))
                 for name, got in cascade.answer_all(test_x, skip=humans).items()}
        tiers = {t.name: getattr(tier, "facts", {}) for t, tier in zip(config.tiers, cascade.tiers, strict=True)}
    doc = {"data": {"run": run.run_id, "split": split, "inputs": len(test_y)}, "config": config.to_dict(),
           "choice": choice_doc, "result": result.to_dict(), "alone": alone, "humans": "simulated by the true labels",
           "tiers": tiers, "seconds": round(time.perf_counter() - t0, 3)}
    if record and run.ledger is not None:
        from nnforge.ledger import Ledger

        summary = {"accuracy": result.accuracy, "alone": alone,
                   "shares": {r.name: r.share for r in result.tiers}, "thresholds": {
                       t.name: t.min_confidence for t in config.tiers[:-1]}}
        with Ledger.open(run.ledger, actor=actor) as led:
            led.append("cascade.evaluated", {"split": split, "inputs": len(test_y), "tiers": config.names,
                                             "choice": choice_doc, **summary}, run=run.run_id)
    return doc
