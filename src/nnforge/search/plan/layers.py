"""``PlanQuantizer``: each (layer, choice) quantized once, so a search's trials only assemble layers.

Calibration statistics are collected once, from the float model, as ``quantize_`` collects them before it
replaces anything; each layer is then quantized from its own statistics with ``quantize_matrix``, exactly as
``quantize_`` quantizes it (same calibrator, group size, symmetry, packed layer). A plan's model is the float
model with the cached layers put in, so a study of many plans pays for each layer format once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from nnforge.compress.quantize import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear
from nnforge.compress.quantize.calibrate import CALIBRATORS, collect_stats
from nnforge.compress.quantize.kernels import FORMATS
from nnforge.compress.quantize.weight_only import quantize_matrix
from nnforge.errors import ConfigError
from nnforge.search.plan.config import PlanSearchConfig, parse_choice

__all__ = ["PlanQuantizer"]


class PlanQuantizer:
    """Builds plans' models for ``model`` (left untouched) from per-layer quantizations made once each.

    Args:
        model: the float model.
        config: the plan search (its ``quantize`` settings and searched ``modules``).
        calibration, forward: batches for calibrators that need data (GPTQ, AWQ), as ``quantize_`` takes them.
    """

    def __init__(self, model: nn.Module, config: PlanSearchConfig, *, calibration: Iterable[Any] | None = None,
                 forward: Callable[[nn.Module, Any], Any] | None = None) -> None:
        from nnforge.search.plan.apply import plan_modules

        self.model, self.config = model, config
        self.kinds = plan_modules(model, config.model_copy(update={"modules": None}))
        searched = plan_modules(model, config)
        self.stats: dict[str, Any] = {}
        linears = [n for n in searched if isinstance(model.get_submodule(n), nn.Linear)]
        if CALIBRATORS.get(config.quantize.calibrator, where="calibrator").needs_data and linears:
            if calibration is None:
                raise ConfigError(f"calibrator {config.quantize.calibrator!r} needs calibration batches: pass "
                                  "calibration=… to the plan search")
            self.stats = collect_stats(model, calibration, modules=linears, forward=forward)
        self._cache: dict[tuple[str, str], nn.Module] = {}

    def layer(self, name: str, choice: str) -> nn.Module:
        """Module ``name`` quantized as ``choice`` (cached)."""
        key = (name, choice)
        if key not in self._cache:
            self._cache[key] = self._quantize(name, choice)
        return self._cache[key]

    def build(self, plan: Mapping[str, str]) -> nn.Module:
        """A copy of the float model with every planned module replaced (``"fp32"`` keeps a module)."""
        unknown = sorted(set(plan) - set(self.kinds))
        if unknown:
            raise ConfigError(f"the plan names {unknown}, which are not Linear/Embedding modules of this model")
        built = copy.deepcopy(self.model)
        for name, choice in plan.items():
            if parse_choice(choice)[0] != "fp32":
                parent, _, child = name.rpartition(".")
                setattr(built.get_submodule(parent) if parent else built, child, self.layer(name, choice))
        return built

    def _quantize(self, name: str, choice: str) -> nn.Module:
        q = self.config.quantize
        mod = self.model.get_submodule(name)
        fmt, group = parse_choice(choice)
        is_emb = isinstance(mod, nn.Embedding)
        weight = mod.get_parameter("weight").detach()
        matrix = weight.reshape(weight.shape[0], -1).cpu()
        gs = (q.embedding_group_size if is_emb else q.group_size) if group == "default" else group
        gs = gs if gs is None or matrix.shape[1] % gs == 0 else None  # per row where the group does not divide K
        spec = FORMATS.get(fmt, where="format")
        symmetric = (q.embedding_symmetric if is_emb else q.symmetric) or not spec.asymmetric_ok
        data_free = not CALIBRATORS.get(q.calibrator, where="calibrator").needs_data
        # as quantize_: GPTQ/AWQ need a Linear's statistics; embeddings get RTN, convs RTN or a data-free calibrator
        calibrator = q.calibrator if isinstance(mod, nn.Linear) or (data_free and not is_emb) else "rtn"
        packed, scale = quantize_matrix(matrix, fmt, gs, symmetric, calibrator, self.stats.get(name), q.damp,
                                        q.act_order, q.calibrator_options)
        new: nn.Module
        if isinstance(mod, nn.Embedding):
            new = QuantizedEmbedding.from_packed(packed, mod.padding_idx, dtype=weight.dtype)
        elif isinstance(mod, nn.Conv2d):
            conv = QuantizedConv2d(mod, fmt, gs, symmetric)
            conv.weight_packed.set_packed(packed)
            new = conv
        elif isinstance(mod, nn.Linear):
            new = QuantizedLinear.from_packed(packed, mod.bias, input_scale=scale, kernel=q.kernel,
                                              act_quant=q.act_quant)
        else:
            raise ConfigError(f"{name}: a {type(mod).__name__} cannot be given a weight format")
        return new.to(weight.device)
