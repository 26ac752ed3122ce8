"""QAT as a training callback: prepare at the start of ``fit``, convert to packed layers at the end."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from nnforge.compress._transform import (
    ModuleChange,
    ModuleFilter,
    TransformReport,
    alias_note,
    candidates,
    register_transform,
    weight_holders,
)
from nnforge.compress.quantize.qat.config import QATConfig
from nnforge.compress.quantize.qat.fake import FakeQuantWeight, fake_quantize_activations

__all__ = ["prepare_qat_", "convert_qat_", "qat_callback", "QATCallback"]

_HOOK = "_nnforge_qat_hook"


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or (s.endswith(".") and name.startswith(s)) for s in skip)


def _act_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (fake_quantize_activations(args[0]), *args[1:])


@register_transform(QATConfig, kind="qat")
def prepare_qat_(model: nn.Module, config: QATConfig, filter: ModuleFilter | None = None, **_: Any) -> TransformReport:
    """Fake-quantize the weights of every Linear / Conv2d (and Embedding if asked) in place.

    The latent fp32 weights stay the same ``nn.Parameter`` objects (a parametrization wraps them), so an
    optimizer built before this call keeps training them.
    """
    report = TransformReport(f"qat:{config.fmt}", config.to_dict())
    holders = weight_holders(model)  # taken before any layer is parametrized
    handled = (nn.Linear, nn.Conv2d, nn.Embedding) if config.embeddings else (nn.Linear, nn.Conv2d)
    for name, mod, others in candidates(model, filter, report, handled, "QAT"):
        if any(_skipped(n, config.skip) for n in (name, *others)):
            continue
        if parametrize.is_parametrized(mod, "weight"):
            report.skipped.append((name, "weight already parametrized (QAT prepared twice?)"))
            continue
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            fq = FakeQuantWeight(config.fmt, config.group_size, config.symmetric)
        elif isinstance(mod, nn.Embedding) and config.embeddings:
            fq = FakeQuantWeight(config.embedding_fmt, None, True)
        else:
            continue
        tied = [h for h in holders.get(id(mod._parameters.get("weight")), []) if h != name]
        if tied:  # checked before any hook: a skipped layer trains exactly as it will be converted (fp32)
            report.skipped.append((name, f"weight tied with {tied[0]}: left in full precision"))
            continue
        if config.activations == 8 and isinstance(mod, nn.Linear):
            setattr(mod, _HOOK, mod.register_forward_pre_hook(_act_hook))
        parametrize.register_parametrization(mod, "weight", fq)
        detail = f"fake-quant {fq.fmt}" + alias_note(others)
        report.changed.append(ModuleChange(name, type(mod).__name__, 0, 0, 0.0, detail, list(others)))
    return report


def convert_qat_(model: nn.Module, config: QATConfig) -> TransformReport:
    """End QAT: drop the parametrizations and pack the trained weights in ``config.fmt``.

    The packed model computes what the fake-quantized one did (same rounding, same fp16 scales); with
    ``activations=8`` its Linear layers quantize activations per token (``act_quant="dynamic"``). The
    report's ``config`` is a :class:`WeightOnlyConfig` that rebuilds the packed model on its own.
    """
    from nnforge.compress.quantize.weight_only import WeightOnlyConfig, apply_weight_only

    names = []
    for name, mod in list(model.named_modules()):
        if parametrize.is_parametrized(mod, "weight"):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
            names.append(name)
        hook = getattr(mod, _HOOK, None)
        if hook is not None:
            hook.remove()
            delattr(mod, _HOOK)
    wanted = set(names)
    others = {n: "fp32" for n, m in model.named_modules()
              if n not in wanted and isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding))}
    wo = WeightOnlyConfig(fmt=config.fmt, group_size=config.group_size, symmetric=config.symmetric,
                          calibrator="rtn", embedding_fmt=config.embedding_fmt, plan=others,
                          modules=("linear", "conv", "embedding"),
                          act_quant="dynamic" if config.activations == 8 else "none")
    # the plan names every module QAT did not train as "fp32", so this config alone rebuilds the model
    return apply_weight_only(model, wo)


class QATCallback:
    """Training callback: :func:`prepare_qat_` at ``FIT_START``; :func:`convert_qat_` at ``FIT_END`` when
    ``convert`` is set and training succeeded. Pass it to :func:`nnforge.train.fit` in ``callbacks``."""

    def __init__(self, config: QATConfig, *, convert: bool = False) -> None:
        self.config, self.convert = config, convert
        self.report: TransformReport | None = None
        self.converted: TransformReport | None = None

    def __call__(self, event: Any, state: Any) -> None:  # the train loop's callback protocol (by event name)
        handler = getattr(self, str(getattr(event, "value", event)), None)
        if handler is not None:
            handler(state)

    def fit_start(self, state: Any) -> None:
        self.report = prepare_qat_(state.model, self.config)

    def fit_end(self, state: Any) -> None:
        if self.convert and getattr(state, "error", None) is None:
            self.converted = convert_qat_(state.model, self.config)


def qat_callback(config: QATConfig | None = None, *, convert: bool = False) -> QATCallback:
    """A :class:`QATCallback` (BitNet b1.58 defaults when ``config`` is omitted)."""
    return QATCallback(config or QATConfig(), convert=convert)
