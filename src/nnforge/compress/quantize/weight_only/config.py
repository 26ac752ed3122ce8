"""Configs of weight-only quantization: one scheme for int8 down to 1-bit, and named presets."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from nnforge.compress.quantize.kernels._format import FORMATS, format_spec
from nnforge.config import Config, config_type

__all__ = ["WeightOnlyConfig", "Int8WeightOnlyConfig", "Int4WeightOnlyConfig", "Int3WeightOnlyConfig",
           "Int2WeightOnlyConfig", "TernaryConfig", "BinaryConfig", "Format", "Calibrator", "GroupSize",
           "check_symmetric"]



def _registered_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(FORMATS.unknown_message(fmt))
    return fmt


def _registered_calibrator(name: str) -> str:
    from nnforge.compress.quantize.calibrate import CALIBRATORS

    if name not in CALIBRATORS:
        raise ValueError(CALIBRATORS.unknown_message(name))
    return name


Format = Annotated[str, AfterValidator(_registered_format)]
"""The name of a registered weight format (:data:`~nnforge.compress.quantize.kernels.FORMATS`)."""
Calibrator = Annotated[str, AfterValidator(_registered_calibrator)]
"""The name of a registered calibrator (:data:`~nnforge.compress.quantize.calibrate.CALIBRATORS`)."""
GroupSize = Literal[32, 64, 128, 256] | None


@config_type("weight-only")
class WeightOnlyConfig(Config):
    """Packed low-bit weights with fp16 group scales; activations stay in floating point.

    Args:
        fmt: weight format of Linear (and Conv) layers.
        group_size: weights sharing one scale (32–256), or ``None`` for one scale per output channel.
        symmetric: fixed zero point; ``False`` stores a zero point per group (int4, int3, int2).
        calibrator: ``rtn`` (round to nearest), ``hqq`` (data-free), ``gptq`` / ``awq`` (need
            calibration batches: ``quantize_(model, config, calibration=batches)``).
        modules: which module types to quantize.
        embedding_fmt / embedding_group_size: format of Embedding tables (default: int8 per row; embeddings
            are looked up, not multiplied, so they keep more bits cheaply).
        embedding_symmetric: ``False`` stores a zero point per embedding group (int4, int3, int2). Worth it at
            4 bits: on all-MiniLM-L6-v2 int4 g32 word embeddings alone drop mean cosine to 0.994 symmetric
            and only to 0.997 asymmetric, for 1 byte more per group.
        plan: per-module formats that override ``fmt`` (mixed precision; ``"fp32"`` keeps a module as it is),
            as written by :func:`~nnforge.compress.quantize.mixed.allocate_bits`.
        kernel: every batch runs int8 per-row activations times the integer codes (the packed kernels on the
            CPU, as llama.cpp does; docs/kernels.md, "Numerics"); ``False`` always dequantizes and multiplies in fp32.
        calibrator_options: options of a registered calibrator that has its own (passed to it as they are).
        damp: GPTQ's Hessian damping, as a fraction of the mean diagonal.
        act_order: GPTQ quantizes columns in order of decreasing Hessian diagonal (group scales from the
            original weight); on all-MiniLM-L6-v2 int4 g32 it lifts mean cosine from 0.989 to 0.991.
        act_quant: ``dynamic`` also rounds each Linear's input to int8 per token (what a QAT model trained with).
    """

    fmt: Format = "int4"
    group_size: GroupSize = 64
    symmetric: bool = True
    calibrator: Calibrator = "rtn"
    modules: tuple[Literal["linear", "embedding", "conv"], ...] = ("linear", "embedding")
    embedding_fmt: Format = "int8"
    embedding_group_size: GroupSize = None
    embedding_symmetric: bool = True
    plan: dict[str, Format | Literal["fp32"]] = Field(default_factory=dict)
    kernel: bool = True
    calibrator_options: dict[str, Any] = Field(default_factory=dict)
    damp: float = Field(0.01, gt=0.0, lt=1.0)
    act_order: bool = False
    act_quant: Literal["none", "dynamic"] = Field("none", description="'dynamic': int8 activations per token "
                                                  "in every Linear (BitNet-style W·A8, set by QAT)")

    @model_validator(mode="after")
    def _check(self) -> WeightOnlyConfig:
        check_symmetric("fmt", self.fmt, self.symmetric)
        check_symmetric("embedding_fmt", self.embedding_fmt, self.embedding_symmetric)
        return self


def check_symmetric(field: str, fmt: str, symmetric: bool) -> None:
    """``ValueError`` when ``symmetric`` is false for a format registered as symmetric only."""
    if not symmetric and not format_spec(fmt).asymmetric_ok:
        ok = ", ".join(name for name, spec in FORMATS.items() if spec.asymmetric_ok)
        sym = "symmetric" if field == "fmt" else "embedding_symmetric"
        raise ValueError(f"{field} {fmt!r} is symmetric only; set {sym}: true or use one of {ok}")


@config_type("int8-weight-only")
class Int8WeightOnlyConfig(WeightOnlyConfig):
    """int8 weights with one scale per output channel (the safest scheme: mean cos ≈ 0.999+)."""

    fmt: Format = "int8"
    group_size: GroupSize = None


@config_type("int4-weight-only")
class Int4WeightOnlyConfig(WeightOnlyConfig):
    """int4 weights, group 64, HQQ-calibrated by default (no data needed)."""

    fmt: Format = "int4"
    group_size: GroupSize = 64
    symmetric: bool = False
    calibrator: Calibrator = "hqq"


@config_type("int3-weight-only")
class Int3WeightOnlyConfig(WeightOnlyConfig):
    """int3 weights (stored in the int4 layout), group 64, asymmetric, HQQ."""

    fmt: Format = "int3"
    group_size: GroupSize = 64
    symmetric: bool = False
    calibrator: Calibrator = "hqq"


@config_type("int2-weight-only")
class Int2WeightOnlyConfig(WeightOnlyConfig):
    """int2 weights, group 64, asymmetric, HQQ."""

    fmt: Format = "int2"
    group_size: GroupSize = 64
    symmetric: bool = False
    calibrator: Calibrator = "hqq"


@config_type("ternary")
class TernaryConfig(WeightOnlyConfig):
    """BitNet b1.58 ternary weights {-s, 0, s}, absmean scale per output channel."""

    fmt: Format = "ternary"
    group_size: GroupSize = None


@config_type("binary")
class BinaryConfig(WeightOnlyConfig):
    """Sign weights {-s, s}, absmean scale per output channel."""

    fmt: Format = "binary"
    group_size: GroupSize = None
