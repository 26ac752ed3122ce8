"""Compression: quantization and pruning as in-place transforms driven by config objects.

>>> from nnforge.compress import quantize_, Int4WeightOnlyConfig
>>> report = quantize_(model, Int4WeightOnlyConfig(group_size=64))  # doctest: +SKIP
>>> report.bytes_after / report.bytes_before  # doctest: +SKIP
0.25...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from nnforge.compress._transform import (
    ModuleChange,
    ModuleFilter,
    TransformReport,
    TransformSpec,
    apply_,
    load_transform_config,
    needs_calibration,
    register_transform,
    set_child,
    tensor_bytes,
    transform_spec,
    transform_types,
    weight_holders,
)
from nnforge.compress.prune import NMConfig, UnstructuredConfig
from nnforge.compress.quantize import (
    BinaryConfig,
    Int2WeightOnlyConfig,
    Int3WeightOnlyConfig,
    Int4WeightOnlyConfig,
    Int8WeightOnlyConfig,
    QuantizedConv2d,
    QuantizedEmbedding,
    QuantizedLinear,
    TernaryConfig,
    W8A8Config,
    WeightOnlyConfig,
    float_activations,
    measure_verdicts,
)
from nnforge.compress.quantize.calibrate import CALIBRATORS, CalibrationJob, CalibratorSpec, register_calibrator
from nnforge.compress.quantize.kernels._format import FORMATS, FormatSpec, register_format
from nnforge.config import Config
from nnforge.errors import ConfigError

__all__ = [
    "quantize_",
    "prune_",
    "UnstructuredConfig",
    "NMConfig",
    "apply_",
    "TransformReport",
    "ModuleChange",
    "WeightOnlyConfig",
    "Int8WeightOnlyConfig",
    "Int4WeightOnlyConfig",
    "Int3WeightOnlyConfig",
    "Int2WeightOnlyConfig",
    "TernaryConfig",
    "BinaryConfig",
    "W8A8Config",
    "QuantizedLinear",
    "QuantizedEmbedding",
    "QuantizedConv2d",
    "measure_verdicts", "float_activations",
    # registries: a method, weight format or calibrator registers itself from its own module
    "register_transform",
    "ModuleFilter",
    "set_child",
    "tensor_bytes",
    "weight_holders",
    "TransformSpec",
    "transform_spec",
    "transform_types",
    "needs_calibration",
    "load_transform_config",
    "FORMATS",
    "FormatSpec",
    "register_format",
    "CALIBRATORS",
    "CalibratorSpec",
    "CalibrationJob",
    "register_calibrator",
]


def quantize_(model: nn.Module, config: Config, filter: ModuleFilter | None = None, *,
              calibration: Iterable[Any] | None = None, forward: Callable[[nn.Module, Any], Any] | None = None,
              progress: Callable[[int, int], None] | None = None) -> TransformReport:
    """Quantize ``model`` in place as ``config`` says; see :func:`apply_` for the contract.

    Args:
        calibration: batches for data-driven calibrators (GPTQ, AWQ, static W8A8, SmoothQuant); each is
            run as ``forward(model, batch)`` (default ``model(batch)``, or ``model(*batch)`` for a tuple).
        progress: ``progress(done, total)`` after each layer.
    """
    inputs: dict[str, Any] = {}
    if calibration is not None:
        inputs.update(calibration=calibration, forward=forward)
    if progress is not None:
        inputs["progress"] = progress
    return apply_(model, config, filter, **inputs)


def prune_(model: nn.Module, config: Config, filter: ModuleFilter | None = None, *,
           calibration: Iterable[Any] | None = None, forward: Callable[[nn.Module, Any], Any] | None = None,
           progress: Callable[[int, int], None] | None = None,
           train: Callable[[nn.Module, list[Any]], Any] | None = None) -> TransformReport:
    """Prune ``model`` in place as ``config`` (a transform of kind ``"prune"``) says; see :func:`apply_`.

    Args:
        calibration: batches for data-driven criteria (Wanda, SparseGPT); each is run as
            ``forward(model, batch)`` (default ``model(batch)``, or ``model(*batch)`` for a tuple).
        progress: ``progress(done, total)`` after each layer.
        train: for a method that prunes while the model trains (``GradualPruneConfig``): ``train(model,
            callbacks)`` runs the training with those :func:`nnforge.train.fit` callbacks.

    Raises:
        ConfigError: ``config`` is not a pruning config (quantize with :func:`quantize_`).
    """
    from nnforge.compress._transform import transform_spec

    kind = transform_spec(config).kind
    if kind != "prune":
        raise ConfigError(f"prune_ takes a pruning config (one of {', '.join(transform_types('prune'))}); "
                          f"{type(config).__name__} is a {kind!r} transform: apply it with "
                          f"{'quantize_' if kind == 'quantize' else 'apply_'}")
    inputs: dict[str, Any] = {}
    if calibration is not None:
        inputs.update(calibration=calibration, forward=forward)
    if progress is not None:
        inputs["progress"] = progress
    if train is not None:
        inputs["train"] = train
    return apply_(model, config, filter, **inputs)
