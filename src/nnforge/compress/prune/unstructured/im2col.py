"""Conv2d layers seen as matrices, so that data-driven criteria (Wanda, SparseGPT) prune them as they prune a
Linear: the kernel is the ``(out, in·kh·kw)`` matrix ``weight.reshape(out, -1)``, and its inputs are the
image patches ``F.unfold`` cuts out of each input (one row of ``in·kh·kw`` values per output position, in the
kernel's own ``(in, kh, kw)`` order), so ``conv(x)`` equals those patches times the matrix transposed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.compress.quantize.calibrate import LayerStats
from nnforge.compress.quantize.calibrate.stats import run_hooked
from nnforge.errors import ConfigError, DataError

__all__ = ["conv_patches", "collect_conv_stats"]


def _padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` as the conv pads (``"same"`` puts the odd pixel right and bottom)."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        (dh, dw), (kh, kw) = conv.dilation, conv.kernel_size
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = (int(p) for p in conv.padding)  # a pair of ints once the strings are handled
    return (pw, pw, ph, ph)


def conv_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The im2col view of ``conv``'s input: ``(B, C, H, W)`` (or ``(C, H, W)``) → ``(B·L, C·kh·kw)``, one row
    per output position, so that ``conv(x)`` is ``patches @ weight.reshape(out, -1).T + bias``."""
    if conv.groups != 1:
        raise ConfigError(f"conv_patches: a grouped conv (groups={conv.groups}) is not one matrix")
    x = x.unsqueeze(0) if x.dim() == 3 else x
    pad = _padding(conv)
    if any(pad):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pad, mode=mode)
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)  # (B, C·kh·kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def collect_conv_stats(model: nn.Module, batches: Iterable[Any], convs: dict[str, nn.Conv2d], *,
                       forward: Callable[[nn.Module, Any], Any] | None = None) -> dict[str, LayerStats]:
    """:class:`LayerStats` of each conv's patches over the calibration batches (the Hessian ``XᵀX / n`` of
    the im2col rows, ``mean |x|`` and ``max |x|`` per patch entry; no row sample), as ``collect_stats`` gives
    for a Linear's inputs."""
    sums: dict[str, list[Any]] = {name: [None, None, None, 0] for name in convs}  # xtx, abs_sum, abs_max, n

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            rows = conv_patches(module, args[0].detach()).to(torch.float64)  # type: ignore[arg-type]
            a = rows.abs()
            if not torch.isfinite(a).all():
                raise DataError(f"calibration: the inputs of layer {name} hold NaN or infinite values; check the "
                                "calibration batches")
            acc = sums[name]
            acc[0] = rows.T @ rows if acc[0] is None else acc[0] + rows.T @ rows
            acc[1] = a.sum(0) if acc[1] is None else acc[1] + a.sum(0)
            acc[2] = a.amax(0) if acc[2] is None else torch.maximum(acc[2], a.amax(0))
            acc[3] += rows.shape[0]
        return hook

    handles = [conv.register_forward_pre_hook(hook_for(name)) for name, conv in convs.items()]
    run_hooked(model, handles, batches, forward)
    silent = [name for name, acc in sums.items() if not acc[3]]
    if silent:
        raise ConfigError(f"No calibration inputs reached {silent}: pass at least one batch that runs through them.")
    return {name: LayerStats(xtx.cpu() / n, n, (abs_sum / n).float().cpu(), abs_max.float().cpu(),
                             torch.zeros(0, xtx.shape[0]))
            for name, (xtx, abs_sum, abs_max, n) in sums.items()}
