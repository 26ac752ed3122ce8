"""A finished run behind ``nnforge serve``: its model variant on the fastest backend measured, its OOD guard,
its labels and its ledger (what :func:`serve_run` wires; :mod:`nnforge.deploy.serve` does the serving).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

from nnforge.deploy.serve import ServeConfig, Service, TorchBackend, choose_backend, input_kind, onnx_backend
from nnforge.errors import ConfigError

__all__ = ["serve_run", "BACKENDS", "sample_inputs", "guard_for"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "native", "onnx")
NATIVE_SUFFIX = "-native"


def sample_inputs(run: Any, split: str | None = None, n: int = 256) -> tuple[list[Any], list[int], str]:
    """Up to ``n`` real inputs of the run's data (the validation split when it has one, else test), their labels
    and the split's name: texts for a text run, flat float lists otherwise."""
    from nnforge.recipes.suites import run_data

    last: Exception | None = None
    for name in ([split] if split else ["val", "test"]):
        try:
            data = run_data(run.config, name)
        except ConfigError as exc:
            last = exc
            continue
        if hasattr(data, "texts"):
            return list(data.texts[:n]), [int(y) for y in list(data.labels)[:n]], name
        x, y = data
        return x[:n].reshape(min(n, len(x)), -1).tolist(), y[:n].tolist(), name
    raise ConfigError(f"run {run.path}: no data split to sample inputs from ({last})")


def _candidates(run: Any, variant: str, which: str, sample: list[Any], shape: tuple[int, ...] | None,
                work: str) -> tuple[list[Any], dict[str, str]]:
    model = run.model(variant)
    out: list[Any] = []
    skipped: dict[str, str] = {}
    if which in ("auto", "torch"):
        out.append(TorchBackend(model, "torch", shape=shape))
    if which in ("auto", "native") and input_kind(model) == "text":
        try:
            out.append(TorchBackend(run.model(variant + NATIVE_SUFFIX), "native"))
        except Exception as exc:  # noqa: BLE001 - a variant the native runtime cannot run is skipped, with why
            skipped["native"] = str(exc)
    if which in ("auto", "onnx"):
        try:
            out.append(onnx_backend(model, work, example=sample[:2], shape=shape))
        except Exception as exc:  # noqa: BLE001 - reported, the other candidates remain
            skipped["onnx"] = f"{type(exc).__name__}: {exc}"
    if not out:
        raise ConfigError(f"backend {which!r} cannot run variant {variant!r}: {skipped.get(which, 'not applicable')}")
    return out, skipped


def _load_guard(run: Any, config: ServeConfig) -> Any:
    """The run's saved OOD guard, or None (the run saved none, or ``ood: off``)."""
    folder = run.path / "ood-guard"
    if config.ood == "off" or not (folder / "guard.json").is_file():
        return None
    from nnforge.explain import OODGuard

    return OODGuard.load(folder)


def _recalibrate(guard: Any, backend: Any, sample: list[Any], config: ServeConfig) -> dict[str, Any]:
    """Re-choose the guard's threshold on the served backend's features of in-distribution data (the validation
    split) at the recall it was saved with: the served variant's features differ a little from the ones it was
    calibrated on. Returns what the server reports about its guard."""
    if guard is None:
        return {"ood_guard": None if config.ood == "off" else "the run saved none"}
    from nnforge.explain import threshold_at_recall

    feats = backend(sample).features
    missing = [k for k in guard.detector.inputs if k not in feats]
    if missing:
        raise ConfigError(f"the OOD guard reads {missing}, which backend {backend.name!r} does not return")
    saved = guard.threshold
    guard.threshold = float(threshold_at_recall(guard.detector.score(**feats), guard.recall, allow_inf=True))
    return {"ood_guard": {"detector": guard.metadata.get("detector"), "recall": guard.recall,
                          "threshold_saved": saved, "threshold_served": guard.threshold,
                          "calibrated_on": f"{len(sample)} inputs of the run's data"}}


def guard_for(run: Any, backend: Any, sample: list[Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The OOD guard ``run``'s evaluate step saved, its threshold re-chosen on ``backend``'s features of the run's
    validation inputs (``sample``, default: up to 256 of them) as :func:`serve_run` does, and what to report about
    it: ``(guard, facts)``, or ``(None, facts)`` when the run saved none."""
    if sample is None:
        sample = sample_inputs(run)[0]
    config = ServeConfig()
    guard = _load_guard(run, config)
    return guard, _recalibrate(guard, backend, sample, config)


def _explainer(path: Any, labels: list[str]) -> Any:
    """``(inputs, method) -> explanations`` with its own copy of the run's PyTorch model (loaded on the first
    request: attribution switches a model's mode and its quantized layers' activations, which the copy serving
    predictions must never see), integrated gradients capped at 256 steps."""
    import threading

    from nnforge.recipes.runs import load_variant

    lock = threading.Lock()
    held: list[Any] = []

    def explain(inputs: list[Any], method: str) -> list[dict[str, Any]]:
        import torch

        from nnforge.explain.attribution import AttributionConfig, attribute

        values = inputs if isinstance(inputs[0], str) else torch.tensor(inputs, dtype=torch.float32)
        with lock:
            if not held:
                held.append(load_variant(path)[0])
            found = attribute(held[0], values, AttributionConfig(method=method, n_steps=32, max_steps=256),
                              label_names=labels)
        return [a.to_dict(top=8) for a in found]

    return explain


def serve_run(run: str | os.PathLike[str], config: ServeConfig, *, variant: str | None = None,
              backend: str = "auto", runs_dir: str | os.PathLike[str] = "runs", ledger: str | None = None,
              allow_modified: bool = False, actor: str | None = None, metrics: bool = True,
              work_dir: str | os.PathLike[str] | None = None) -> Service:
    """A :class:`~nnforge.deploy.serve.Service` for a finished run (not started: ``create_app`` starts it).

    Args:
        backend: ``auto`` measures every backend that can run the variant and keeps the fastest; or one of
            ``torch``, ``native`` (the int8 BERT-family encoder in nnforge's native runtime), ``onnx``.
        ledger: where decisions are recorded (default: the ledger that recorded the run).

    Raises:
        ConfigError: an unknown backend or variant, inputs recording the recipe does not allow.
        IntegrityError: the run's files are not what its ledger recorded.
    """
    from nnforge.recipes.runs import load_run

    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one of {list(BACKENDS)}")
    r = load_run(run, runs_dir, ledger=ledger, allow_modified=allow_modified, actor=actor, use="serve")
    if config.record_inputs and not (r.config.get("recipe") or {}).get("metadata", {}).get("record_inputs"):
        raise ConfigError(f"run {r.run_id}: record_inputs needs the recipe's metadata to allow it "
                          "(metadata: {record_inputs: true}); without it only each input's sha256 is recorded")
    name = variant or r.config.get("final_variant") or next(iter(r.variants))
    if name not in r.variants:
        raise ConfigError(f"run {r.path} has no variant {name!r}; it has {sorted(r.variants)}")
    labels = r.label_names or [str(i) for i in range(int(r.config.get("num_classes", 0)) or 0)]
    sample, _, split = sample_inputs(r)
    shape = None if isinstance(sample[0], str) else (len(sample[0]),)
    work = str(work_dir) if work_dir is not None else tempfile.mkdtemp(prefix="nnforge-serve-")
    cands, skipped = _candidates(r, name, backend, sample, shape, work)
    guard = _load_guard(r, config)
    try:
        choice = choose_backend(cands, sample, max_batch=config.max_batch,
                                needs=tuple(guard.detector.inputs) if guard is not None else ())
    finally:
        if work_dir is None:  # ONNX Runtime holds the model in memory once its session is open
            shutil.rmtree(work, ignore_errors=True)
    for k, why in skipped.items():
        choice.timings[k] = {"skipped": why}
    log.info("backend %s (ms per call: %s)", choice.backend.name, choice.timings)
    guard_facts = _recalibrate(guard, choice.backend, sample, config)
    if not labels:
        labels = [str(i) for i in range(int(choice.backend(sample[:1]).logits.shape[-1]))]
    loc = ledger or r.ledger
    if loc is None:
        raise ConfigError(f"run {r.run_id}: no ledger records it; pass ledger=")
    facts = {"backends_ms": choice.timings, "sample_split": split, "weights": r.used(name), **guard_facts}
    svc = Service(choice.backend, labels, config, ledger=str(loc), run=r.run_id, variant=name, guard=guard,
                  facts=facts)
    svc.explainer = _explainer(r.variant_file(name), labels)
    if metrics:
        from nnforge.deploy.serve.metrics import Metrics

        svc.metrics = Metrics(svc.queue_depth)
    return svc
