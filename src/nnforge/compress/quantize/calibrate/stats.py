"""Calibration statistics of every ``nn.Linear`` input: the Hessian GPTQ needs, the activation magnitudes
AWQ and SmoothQuant need, and a sample of input rows to measure a layer's output error on."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nnforge.compress.quantize.calibrate._common import check_int
from nnforge.errors import ConfigError, DataError

__all__ = ["LayerStats", "collect_stats", "run_batch"]

log = logging.getLogger(__name__)


@dataclass
class LayerStats:
    """What one ``nn.Linear`` saw: statistics of its inputs ``x`` flattened to ``(tokens, K)``.

    ``hessian``: float64 ``(K, K)``, ``sum_t x_t x_tᵀ / n`` (GPTQ's proxy Hessian up to the factor 2, which
    the relative damping makes irrelevant); ``n``: number of tokens; ``abs_mean`` / ``abs_max``: float32
    ``(K,)`` per-input-channel ``mean |x|`` (AWQ) and ``max |x|`` (SmoothQuant); ``sample``: float32
    ``(<= sample_rows, K)``, a uniform random subset of the input rows (without replacement);
    ``shared_with``: the name of an earlier module that received the very same input tensor in the first
    calibration batch (the key and value projections of an attention block share the query's input), else
    ``None`` — what SmoothQuant needs to give such layers one scale.
    """

    hessian: torch.Tensor
    n: int
    abs_mean: torch.Tensor
    abs_max: torch.Tensor
    sample: torch.Tensor
    shared_with: str | None = None


class _Accumulator:
    """Running sums for one module (float64), and a reservoir of rows kept by the smallest random keys."""

    def __init__(self, K: int, sample_rows: int, generator: torch.Generator) -> None:
        self.K, self.sample_rows, self.generator = K, sample_rows, generator
        self.xtx: torch.Tensor | None = None
        self.abs_sum = torch.zeros(K, dtype=torch.float64)
        self.abs_max = torch.zeros(K, dtype=torch.float64)
        self.n = 0
        self.rows = torch.zeros(0, K, dtype=torch.float32)
        self.keys = torch.zeros(0, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> bool:
        """Take one batch of inputs; ``False`` (and nothing taken) when they hold NaN or inf."""
        x = x.detach().reshape(-1, self.K)
        if not x.shape[0]:
            return True
        x64 = x.to(torch.float64)
        a = x64.abs()
        abs_sum = a.sum(0).cpu()  # NaN/inf anywhere shows here (no float32 sum overflows float64)
        if not torch.isfinite(abs_sum).all():
            return False
        xtx = (x64.T @ x64).cpu()
        self.xtx = xtx if self.xtx is None else self.xtx + xtx
        self.abs_sum += abs_sum
        self.abs_max = torch.maximum(self.abs_max, a.amax(0).cpu())
        self.n += x.shape[0]
        if self.sample_rows:
            keys = torch.rand(x.shape[0], generator=self.generator, dtype=torch.float64)
            self.keys = torch.cat([self.keys, keys])
            self.rows = torch.cat([self.rows, x.to(device="cpu", dtype=torch.float32)])
            if self.keys.numel() > self.sample_rows:
                keep = torch.topk(self.keys, self.sample_rows, largest=False).indices.sort().values
                self.keys, self.rows = self.keys[keep], self.rows[keep]
        return True

    def result(self) -> LayerStats:
        assert self.xtx is not None
        return LayerStats(self.xtx / self.n, self.n, (self.abs_sum / self.n).float(), self.abs_max.float(),
                          self.rows.contiguous())


def run_batch(model: nn.Module, batch: Any) -> Any:
    """The default calibration forward: ``model(*batch)`` for a tuple or list, ``model(**batch)`` for a dict,
    else ``model(batch)``."""
    if isinstance(batch, tuple | list):
        return model(*batch)
    if isinstance(batch, dict):
        return model(**batch)
    return model(batch)


def run_hooked(model: nn.Module, handles: Sequence[Any], batches: Iterable[Any],
               forward: Callable[[nn.Module, Any], Any] | None = None) -> None:
    """Run ``batches`` through ``model`` without gradients (``forward`` or :func:`run_batch`), then remove the
    hook ``handles`` registered to observe them, also when a batch fails."""
    run = forward if forward is not None else run_batch
    try:
        with torch.no_grad():
            for batch in batches:
                run(model, batch)
    finally:
        for h in handles:
            h.remove()


def collect_stats(model: nn.Module, batches: Iterable[Any], *, modules: Sequence[str] | None = None,
                  forward: Callable[[nn.Module, Any], Any] | None = None, sample_rows: int = 512,
                  progress: bool = False, seed: int = 0) -> dict[str, LayerStats]:
    """Run calibration batches through ``model`` and collect :class:`LayerStats` for its linear layers.

    Forward pre-hooks on every ``nn.Linear`` (or only the module names in ``modules``) record each input
    flattened to ``(-1, in_features)``: the GPTQ Hessian ``XᵀX / n`` (Frantar et al. 2023, "GPTQ: Accurate
    Post-Training Quantization for Generative Pre-trained Transformers"), the per-channel ``mean |x|`` of
    AWQ (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization") and ``max |x|`` of SmoothQuant (Xiao
    et al. 2023, "SmoothQuant"), and a random sample of ``sample_rows`` input rows (seeded by ``seed``).

    Each batch goes through ``forward(model, batch)`` when given; otherwise ``model(*batch)`` for a tuple or
    list, ``model(**batch)`` for a dict and ``model(batch)`` for anything else, under ``torch.no_grad()``.
    The model's train/eval mode is left as it is (call ``model.eval()`` first to turn dropout off). Hooks are
    removed afterwards, also when a batch raises. With ``progress`` each batch is logged at INFO level.

    Returns the statistics keyed by module name (as in ``model.named_modules()``); a module that saw no
    tokens is a :class:`ConfigError`.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"The 'model' parameter must be a torch.nn.Module. Got {type(model).__name__} instead.")
    check_int("sample_rows", sample_rows, 0)
    if isinstance(batches, torch.Tensor):
        raise ConfigError("The 'batches' parameter must be an iterable of batches (e.g. a list or a DataLoader), "
                          "not one tensor: wrap a single batch as [x].")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if modules is None:
        chosen = linears
    else:
        if isinstance(modules, str):
            raise ConfigError(f"The 'modules' parameter must be a list of module names. Got the string {modules!r} instead.")
        unknown = [name for name in modules if name not in linears]
        if unknown:
            raise ConfigError(f"The 'modules' parameter names {unknown}, which are not nn.Linear modules of the model. "
                              f"Choose from {sorted(linears)}.")
        chosen = {name: linears[name] for name in modules}
    if not chosen:
        raise ConfigError("The model has no nn.Linear module to collect statistics for (or 'modules' is empty).")
    run = forward if forward is not None else run_batch
    generator = torch.Generator().manual_seed(seed)
    accs = {name: _Accumulator(m.in_features, sample_rows, generator) for name, m in chosen.items()}

    first_batch = [True]
    # id(input) -> the first module that got it; a weak reference tells a live tensor from a new one that
    # reuses a freed tensor's id, without keeping the first batch's activations in memory
    seen: dict[int, tuple[str, weakref.ref[torch.Tensor]]] = {}
    shared: dict[str, str] = {}

    def hook_for(name: str, acc: _Accumulator) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs["input"]
            if not isinstance(x, torch.Tensor) or not x.dim() or x.shape[-1] != acc.K:
                raise DataError(f"calibration: layer {name} takes inputs with {acc.K} features; a batch gave it "
                                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
            if first_batch[0] and name not in shared:
                owner, ref = seen.get(id(x), (name, None))
                if ref is None or ref() is not x:
                    seen[id(x)] = (name, weakref.ref(x))
                elif owner != name:
                    shared[name] = owner
            if not acc.add(x):  # checked on the CPU copy of the batch's sums: no extra sync with a GPU
                raise DataError(f"calibration: the inputs of layer {name} hold NaN or infinite values; check the "
                                "calibration batches (and the model's output on them)")

        return hook

    handles = [m.register_forward_pre_hook(hook_for(name, accs[name]), with_kwargs=True)
               for name, m in chosen.items()]
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                run(model, batch)
                first_batch[0] = False
                seen.clear()
                if progress:
                    log.info("calibration batch %d done", i + 1)
    finally:
        for h in handles:
            h.remove()
    silent = [name for name, acc in accs.items() if acc.n == 0]
    if silent:
        raise ConfigError(f"No calibration tokens reached {silent}: pass at least one batch that runs through them.")
    out = {name: acc.result() for name, acc in accs.items()}
    for name, owner in shared.items():
        out[name].shared_with = owner
    return out
