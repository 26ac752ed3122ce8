"""Apply :class:`SparsifyConfig`: pruned Linear layers become :class:`SparseLinear`, each with its measured verdict."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from nnforge.compress._transform import (
    ModuleChange,
    ModuleFilter,
    TransformReport,
    alias_note,
    candidates,
    drop_partial_ties,
    register_transform,
    relative_error,
    replace_all,
    tensor_bytes,
)
from nnforge.compress.prune.kernels import sparse_format, sparsify_weight
from nnforge.compress.prune.sparse.config import SparsifyConfig
from nnforge.compress.prune.sparse.layer import SparseLinear
from nnforge.errors import ConfigError

__all__ = ["apply_sparsify", "is_2_4"]


def is_2_4(w: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive weights of each row (zero-padded) holds at most 2 non-zeros."""
    n, k = w.shape
    full = torch.zeros(n, -(-k // 4) * 4, device=w.device)
    full[:, :k] = w != 0
    return bool((full.view(n, -1, 4).sum(-1) <= 2).all())


def _choose(name: str, w: torch.Tensor, config: SparsifyConfig) -> tuple[str | None, str]:
    """(format, "") for a layer, or (None, why it stays dense)."""
    sparsity = float((w == 0).float().mean())
    fmt = config.plan.get(name) or config.fmt
    pattern24 = is_2_4(w)
    if fmt == "auto":
        fmt = ("2:4" if pattern24 else "csr") + ("-int8" if config.values == "int8" else "")
    spec = sparse_format(fmt)
    if spec.pattern == "2:4" and not pattern24:
        return None, (f"not 2:4 sparse (some group of 4 weights holds 3 or 4 non-zeros; sparsity {sparsity:.1%}): "
                      f"prune it with an N:M 2:4 config before storing it as {fmt}")
    if spec.pattern == "unstructured" and sparsity < config.min_sparsity:
        return None, (f"only {sparsity:.1%} zeros (min_sparsity {config.min_sparsity:.0%}): {fmt} would not be "
                      "smaller or faster than the dense weight")
    if w.shape[1] > 65536:
        return None, f"K={w.shape[1]} inputs: sparse formats index at most 65536 columns"
    return fmt, ""


def _targets(model: nn.Module, config: SparsifyConfig, filter: ModuleFilter | None, report: TransformReport,
             skeleton: bool) -> list[tuple[str, nn.Linear, list[str]]]:
    out = []
    for name, mod, others in candidates(model, filter, report, (nn.Linear,), "sparsify"):
        if isinstance(mod, nn.Linear):
            if config.plan and name not in config.plan and not any(o in config.plan for o in others):
                report.skipped.append((name, "not in the sparsify plan: left dense"))
            else:
                out.append((name, mod, others))
        elif any(True for _ in mod.parameters(recurse=False)) and not isinstance(mod, SparseLinear):
            report.skipped.append((name, f"{type(mod).__name__} is not handled by sparsify (Linear layers are)"))
    if skeleton and not config.plan:
        raise ConfigError("sparsify with skeleton=True needs the config's plan (module -> format), which apply writes "
                          "into its report's config: rebuild from that config")
    return drop_partial_ties(model, out, report)


@register_transform(SparsifyConfig, kind="prune")
def apply_sparsify(model: nn.Module, config: SparsifyConfig, filter: ModuleFilter | None = None, *,
                   calibration: Iterable[Any] | None = None, forward: Any = None, skeleton: bool = False,
                   progress: Any = None) -> TransformReport:
    """Store the zeros of pruned Linear layers sparsely (see :class:`SparsifyConfig`) and measure each layer's
    sparse-vs-dense verdict. The report's config carries the resolved ``plan`` (module -> format), from which
    ``skeleton=True`` rebuilds the same layers (the saved state then fills them, CSR lengths included)."""
    report = TransformReport(f"sparsify:{config.fmt}", config.to_dict())
    plan: dict[str, str] = {}
    targets = _targets(model, config, filter, report, skeleton)
    for i, (name, mod, others) in enumerate(targets):
        w = mod.weight.detach()
        if skeleton:
            fmt: str | None = config.plan.get(name) or next(config.plan[o] for o in others if o in config.plan)
            assert fmt is not None  # noqa: S101 - _targets keeps planned modules only
            new = SparseLinear(mod.in_features, mod.out_features, mod.bias is not None, fmt, config.batch_sizes)
            replace_all(model, name, others, new)
            continue
        fmt, why = _choose(name, w.float(), config)
        if fmt is None:
            report.skipped.append((name, why))
            continue
        sw = sparsify_weight(w, fmt)
        new = SparseLinear.from_sparse(sw, mod.bias, batch_sizes=config.batch_sizes)
        if config.execute == "measured":
            new.measure(repeats=config.repeats)
        else:
            new.force(config.execute == "sparse")
        sparsity = float((w == 0).float().mean())
        detail = (f"{fmt}: sparsity {sparsity:.1%}, {sw.nnz} values stored ({sw.nbytes / 1e6:.3f} MB instead of "
                  f"{w.numel() * 4 / 1e6:.3f} MB); {new.verdict}{alias_note(others)}")
        report.changed.append(ModuleChange(name, "Linear", tensor_bytes(mod.weight, mod.bias), new.nbytes,
                                           relative_error(w, sw.dense().to(w.device)), detail, list(others)))
        replace_all(model, name, others, new.to(w.device))
        plan[name] = fmt
        if progress:
            progress(i + 1, len(targets))
    if not skeleton:
        report.config = config.replace(plan=plan).to_dict()
    return report
