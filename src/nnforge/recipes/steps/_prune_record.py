"""What the ``prune`` step records per pruned module: measured from the models, not taken on trust.

Shapes, parameters and non-zero weights come from the base and the pruned module themselves; FLOPs are
counted on one real batch, per layer with a weight, as the model executes it (zeros in a dense matrix are
still multiplied, so their FLOPs do not drop; a structurally pruned layer has smaller matrices; a sparse layer
running its sparse kernel multiplies only what it stores); bytes are
what the method's report says the stored form needs; the model's speed verdict is an interleaved batch-1
timing against its base (:func:`nnforge.hardware.time_verdict`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from nnforge.compress import ModuleFilter, TransformReport

__all__ = ["module_filter", "unmatched_patterns", "count_flops", "layer_decisions", "speed_verdict_b1", "totals", "model_flops",
           "layer_verdict"]

Forward = Callable[[nn.Module, Any], Any]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """``name`` or one of its parents (``blocks.0`` for ``blocks.0.attn.qkv``) matches a pattern."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatchcase(p, pat) for pat in patterns for p in prefixes)


def module_filter(modules: Sequence[str], exclude: Sequence[str]) -> ModuleFilter | None:
    """The transform filter for name patterns (``None`` when there are none: every module)."""
    if not modules and not exclude:
        return None
    return lambda name, mod: (not modules or _matches(name, modules)) and not _matches(name, exclude)


def unmatched_patterns(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The patterns that match no module of ``model``."""
    names = [n for n, _ in model.named_modules() if n]
    return [p for p in patterns if not any(_matches(n, [p]) for n in names)]


def _run(model: nn.Module, batch: Any, forward: Forward | None) -> Any:
    if forward is not None:
        return forward(model, batch)
    return model(*batch) if isinstance(batch, tuple) else model(batch)


def _layer_flops(module: nn.Module, x: torch.Tensor, out: Any) -> int:
    """FLOPs (a multiply-add is 2) of one call of a layer with a weight, as it executes: a sparse layer that runs
    its sparse kernel multiplies its stored values only."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and isinstance(out, torch.Tensor):
        per_output = module.in_channels // module.groups * int(torch.tensor(module.kernel_size).prod())
        return 2 * out.numel() * per_output
    k, n = int(module.in_features), int(module.out_features)  # type: ignore[arg-type]
    rows = x.numel() // k if k else 0
    runs_sparse = getattr(module, "runs_sparse", None)
    if callable(runs_sparse) and runs_sparse(rows):
        return 2 * rows * int(module.sparse.values.numel())  # type: ignore[union-attr,operator]
    return 2 * rows * k * n


def _counted(module: nn.Module) -> bool:
    """A layer with a weight whose FLOPs are counted: a Linear or conv, or a packed/sparse layer standing in for one."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return True
    return not any(True for _ in module.children()) and hasattr(module, "in_features") \
        and hasattr(module, "out_features")


def count_flops(model: nn.Module, batch: Any, forward: Forward | None) -> dict[str, int]:
    """FLOPs of one forward pass over ``batch`` per layer with a weight (Linear, conv, and the packed or sparse layers
    that replace them), as executed, and their sum under ``""``. Counted by hooks on those layers: the products of
    activations with each other (attention scores) are not counted."""
    counts: dict[str, int] = {}

    def hook(name: str) -> Any:
        def count(module: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if x is not None:
                counts[name] = counts.get(name, 0) + _layer_flops(module, x, out)
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n and _counted(m)]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            _run(model, batch, forward)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    counts[""] = sum(counts.values())
    return counts


def _weight(module: nn.Module | None) -> torch.Tensor | None:
    """The module's weight as a dense tensor: ``.weight``, or what a packed or sparse layer stores, densified."""
    if module is None:
        return None
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor):
        return w
    with torch.no_grad():
        if callable(getattr(module, "dequantize", None)):  # a quantized layer
            return module.dequantize()  # type: ignore[operator,no-any-return]
        sparse = getattr(module, "sparse", None)  # a sparse layer (SparseLinear)
        if callable(getattr(sparse, "dense", None)):
            return sparse.dense()  # type: ignore[union-attr,no-any-return]
    return None


def layer_verdict(shape_smaller: bool, sparsity: float, flops_before: int | None, flops_after: int | None,
                  module: nn.Module | None) -> str:
    """What pruning this layer buys in speed, in words: a sparse layer's own measured verdict where it has one."""
    own = getattr(module, "verdict", None)
    if isinstance(own, str) and own:
        return own
    if module is None:
        return "removed: no FLOPs, no bytes"
    if shape_smaller:
        return "smaller matrices, executed dense: fewer FLOPs (time measured for the whole model)"
    if flops_before is not None and flops_after is not None and flops_after < flops_before:
        return "fewer FLOPs as executed (time measured for the whole model)"
    if sparsity > 0:
        return "zeros executed dense: no fewer FLOPs and no speed-up (memory only where stored sparse)"
    return "unchanged"


def layer_decisions(base: nn.Module, pruned: nn.Module, report: TransformReport, flops_before: dict[str, int],
                    flops_after: dict[str, int]) -> list[dict[str, Any]]:
    """One record per module the report says changed: shapes, parameters, non-zeros, sparsity, the method's
    criterion and pattern, bytes, FLOPs and the layer's speed verdict."""
    data = report.config.get("data", {}) if isinstance(report.config, dict) else {}
    method = {k: data[k] for k in ("criterion", "pattern", "scope", "n", "m", "sparsity", "granularity")
              if k in data}
    out = []
    for c in report.changed:
        before = _weight(_get(base, c.name))
        after_mod = _get(pruned, c.name)
        after = _weight(after_mod)
        numel = int(before.numel()) if before is not None else None
        stored = int(after.numel()) if after is not None else (0 if after_mod is None else None)
        nonzero = int(torch.count_nonzero(after.detach()).item()) if after is not None else stored
        sparsity = 1.0 - nonzero / numel if numel and nonzero is not None else None
        smaller = numel is not None and stored is not None and stored < numel
        fb, fa = flops_before.get(c.name), flops_after.get(c.name, 0 if after_mod is None else None)
        out.append({"module": c.name, "kind": c.kind, **method,
                    "shape_before": list(before.shape) if before is not None else None,
                    "shape_after": list(after.shape) if after is not None else None,
                    "params_before": numel, "params_after": stored, "nonzero_after": nonzero, "sparsity": sparsity,
                    "bytes_before": c.bytes_before, "bytes_after": c.bytes_after, "weight_error": c.error,
                    "flops_before": fb, "flops_after": fa, "detail": c.detail,
                    "verdict": layer_verdict(smaller, sparsity or 0.0, fb, fa, after_mod)})
    return out


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def totals(layers: list[dict[str, Any]], report: TransformReport) -> dict[str, Any]:
    """Sums over the pruned modules: parameters, non-zeros, bytes, FLOPs (and the whole model's FLOPs)."""
    def total(key: str) -> int | None:
        values = [x[key] for x in layers]
        return None if any(v is None for v in values) else int(sum(values))

    before, after, nonzero = total("params_before"), total("params_after"), total("nonzero_after")
    return {"modules": len(layers), "params_before": before, "params_after": after, "nonzero_after": nonzero,
            "sparsity": 1.0 - nonzero / before if before and nonzero is not None else None,
            "params_ratio": after / before if before and after is not None else None,
            "bytes_before": report.bytes_before, "bytes_after": report.bytes_after}


def model_flops(summary: dict[str, Any], flops_before: dict[str, int], flops_after: dict[str, int]) -> None:
    """Add the whole model's FLOPs per batch (before, after, ratio) to ``summary``."""
    fb, fa = flops_before.get(""), flops_after.get("")
    summary.update(flops_before=fb, flops_after=fa, flops_ratio=fa / fb if fb and fa is not None else None)


def _first(batch: Any) -> Any:
    """The first example of a batch, still a batch (of one)."""
    if isinstance(batch, torch.Tensor):
        return batch[:1]
    if isinstance(batch, dict):
        return {k: _first(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_first(v) for v in batch)
    return batch


def speed_verdict_b1(model: nn.Module, base: nn.Module, batch: Any, forward: Forward | None,
                     repeats: int) -> dict[str, Any] | None:
    """Batch-1 latency of ``model`` against ``base``, timed interleaved, with the speed-up's interval and a
    verdict (``faster`` / ``slower`` / ``not significant``); ``None`` when ``repeats`` is 0."""
    if repeats <= 0:
        return None
    from nnforge.hardware import time_verdict

    one = _first(batch)
    states = (model.training, base.training)
    model.eval(), base.eval()
    try:
        with torch.inference_mode():
            t = time_verdict(lambda: _run(model, one, forward), lambda: _run(base, one, forward),
                             warmup=2, repeats=repeats)
    finally:
        model.train(states[0]), base.train(states[1])
    return {"pruned_ms": t["candidate_ms"], "base_ms": t["baseline_ms"], "speedup": t["speedup"],
            "speedup_ci": list(t["speedup_ci"]), "p_value": t["p_value"], "verdict": t["verdict"]}
