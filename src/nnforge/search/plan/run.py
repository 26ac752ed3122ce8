"""``plan_search``: a study over per-layer formats, each trial's model measured on this machine.

    result = plan_search(model, example_inputs, fidelity_fn, PlanSearchConfig(constraints=["size_mb <= 15"]),
                         calibration=batches, storage="plans.journal")
    result.best          # the Pareto front (fidelity vs size, …)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from nnforge.errors import ConfigError
from nnforge.hardware import MEASURED_METRICS, measure_model
from nnforge.search._result import SearchResult
from nnforge.search.plan.apply import plan_from_params, plan_space
from nnforge.search.plan.config import PlanSearchConfig
from nnforge.search.plan.layers import PlanQuantizer

__all__ = ["plan_search", "measure_plan"]

log = logging.getLogger(__name__)

FidelityFn = Callable[[nn.Module], Mapping[str, float]]  # e.g. {"cos_mean": 0.996} against the float model


def measure_plan(quantizer: PlanQuantizer, plan: Mapping[str, str], example_inputs: Any, fidelity_fn: FidelityFn, *,
                 measure: Mapping[str, Any] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Build ``plan``'s model from ``quantizer`` and measure it: (numeric metrics, labels such as energy_source).

    The metrics are ``fidelity_fn``'s plus :func:`~nnforge.hardware.measure_model`'s figures (``size_mb`` is the
    quantized model's safetensors file, ``latency_b1_ms`` its batch-1 median, …).
    """
    quantized = quantizer.build(plan)
    fidelity = {k: float(v) for k, v in fidelity_fn(quantized).items()}
    hw = measure_model(quantized, example_inputs, **dict(measure or {}))
    clash = sorted(set(fidelity) & set(MEASURED_METRICS))
    if clash:
        raise ConfigError(f"the fidelity function returns {clash}, names of measured hardware figures; rename them")
    metrics = {**fidelity, **{k: float(hw[k]) for k in MEASURED_METRICS if hw.get(k) is not None}}
    labels = {"energy_source": hw["energy_source"], "energy_watts_per_core": hw["energy_watts_per_core"],
              "choices": _count(plan)}
    return metrics, labels


def _count(plan: Mapping[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for choice in plan.values():
        counts[choice] = counts.get(choice, 0) + 1
    return counts


def plan_search(model: nn.Module, example_inputs: Any, fidelity_fn: FidelityFn, config: PlanSearchConfig, *,
                storage: str | os.PathLike[str], calibration: Iterable[Any] | None = None,
                forward: Callable[[nn.Module, Any], Any] | None = None, measure: Mapping[str, Any] | None = None,
                progress: Any = None) -> SearchResult:
    """Search per-layer formats for ``model`` (left untouched) with ``nnforge.search.search``.

    Args:
        model: the floating-point model.
        example_inputs: one batch-1 input for :func:`~nnforge.hardware.measure_model`.
        fidelity_fn: ``fidelity_fn(quantized) -> {name: value}`` (e.g. mean cosine to the float model's outputs,
            or accuracy), measured on data the final figures are not reported on.
        config: formats, quantization and the study.
        storage: the study's journal file or ``postgresql://`` URL (a study resumes there).
        calibration, forward: calibration batches (GPTQ/AWQ) and how to run one, as ``quantize_`` takes them;
            statistics are collected once and each (layer, choice) is quantized once (:class:`PlanQuantizer`).
        measure: options of ``measure_model`` (``repeats``, ``warmup``, ``artifact_paths`` is not allowed).

    Returns:
        the study; ``trials[i].params`` hold ``plan:<module>`` formats (:func:`plan_from_params` turns them back).
    """
    from nnforge.search import search

    if measure and "artifact_paths" in measure:
        raise ConfigError("plan_search measures each plan's own safetensors file; remove 'artifact_paths'")
    space = plan_space(model, config)
    quantizer = PlanQuantizer(model, config, calibration=calibration, forward=forward)  # statistics once

    def trial(ctx: Any) -> dict[str, float]:
        plan = plan_from_params(ctx.params)
        metrics, labels = measure_plan(quantizer, plan, example_inputs, fidelity_fn, measure=measure)
        for key, value in labels.items():
            ctx.set_attr(key, value)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise ConfigError(f"trial {ctx.number}: {bad} are not finite numbers ({metrics})")
        log.info("plan trial %d: %s", ctx.number, {k: round(v, 5) for k, v in metrics.items()})
        return metrics

    return search(trial, config.search_config(space), storage=storage, progress=progress)
