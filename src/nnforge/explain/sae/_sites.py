"""Where activations are read and replaced: named sites of a model, forward hooks, and running a batch.

A *site* is the output of one submodule. It is named either by the submodule's dotted name
(``"transformer.h.1"``) or, for the residual stream of the models nnforge knows, as ``"residual.<i>"``: the
stream after block ``i`` (``0``: the embeddings' output, before the first block)::

    char-GPT / MoE-GPT      residual.0 = transformer.drop      residual.i = transformer.h.<i-1>
    MiniLM (TextClassifier) residual.0 = encoder.embeddings    residual.i = encoder.encoder.layer.<i-1>

A *batch* is ``(inputs, targets)`` (the char-GPT's ``(x, y)``: the model is called as ``model(x)``) or a mapping
of keyword inputs (a tokenizer's ``input_ids`` and ``attention_mask``, plus ``labels`` for a loss): the model is
called with the keywords its ``forward`` accepts. Positions where ``attention_mask`` is 0 are padding and are
never counted.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.errors import ConfigError, DataError, ModelError
from nnforge.models.text import eval_mode

__all__ = ["Batch", "resolve_site", "residual_site", "residual_sites", "capture", "replace_activations",
           "collect_activations", "run_batch", "batch_mask", "batch_tokens", "batch_loss"]

Batch = tuple[torch.Tensor, torch.Tensor] | Mapping[str, torch.Tensor]


# --- naming sites -------------------------------------------------------------------------------------------

def _residual_layout(model: nn.Module) -> tuple[str, str] | None:
    """(embeddings' module name, prefix of the blocks' names) of a model whose residual stream nnforge knows."""
    names = dict(model.named_modules())
    if "transformer.h" in names and "transformer.drop" in names:  # char-GPT, MoE-GPT (nanoGPT layout)
        return "transformer.drop", "transformer.h"
    for root in ("encoder.", ""):  # a TextClassifier over a BERT-style encoder, or the encoder itself
        if f"{root}embeddings" in names and f"{root}encoder.layer" in names:
            return f"{root}embeddings", f"{root}encoder.layer"
    return None


def residual_sites(model: nn.Module) -> list[str]:
    """``["residual.0", …, "residual.<blocks>"]`` for a model whose residual stream nnforge knows; else ``[]``."""
    layout = _residual_layout(model)
    if layout is None:
        return []
    blocks = model.get_submodule(layout[1])
    return [f"residual.{i}" for i in range(len(blocks) + 1)]  # type: ignore[arg-type]


def residual_site(model: nn.Module, block: int) -> str:
    """The module name of the residual stream after ``block`` (0: the embeddings), e.g. ``"transformer.h.1"``.

    Raises:
        ModelError: nnforge does not know this model's residual stream, or ``block`` is out of range.
    """
    layout = _residual_layout(model)
    if layout is None:
        raise ModelError(f"{type(model).__name__}: not a model whose residual stream nnforge knows (char-GPT, "
                         "MoE-GPT, a BERT-style encoder); name the site by its module name instead")
    n = len(model.get_submodule(layout[1]))  # type: ignore[arg-type]
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block <= n:
        raise ModelError(f"{type(model).__name__} has {n} blocks: the residual stream is residual.0 (embeddings) "
                         f"to residual.{n}; got block {block!r}")
    return layout[0] if block == 0 else f"{layout[1]}.{block - 1}"


def resolve_site(model: nn.Module, site: str) -> tuple[str, nn.Module]:
    """``(module name, module)`` of ``site`` (``"residual.<i>"`` or a module name).

    Raises:
        ConfigError: no such site; the message suggests the closest names.
    """
    if not isinstance(site, str):
        raise ConfigError(f"a site is a string ('residual.2' or a module name); got {site!r}")
    if site.startswith("residual."):
        index = site.removeprefix("residual.")
        if not index.isdigit():
            raise ConfigError(f"site {site!r}: expected residual.<block number>, e.g. residual.2")
        try:
            name = residual_site(model, int(index))
        except ModelError as exc:
            raise ConfigError(f"site {site!r}: {exc}") from None
        return name, model.get_submodule(name)
    modules = dict(model.named_modules())
    if site in modules and site:
        return site, modules[site]
    known = residual_sites(model) + [n for n in modules if n]
    close = difflib.get_close_matches(site, known, n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    shown = ", ".join(residual_sites(model)) or ", ".join(known[:12])
    raise ConfigError(f"{type(model).__name__} has no site {site!r}{hint}. Sites are 'residual.<i>' or a module "
                      f"name from model.named_modules(); e.g. {shown}.")


# --- hooks ------------------------------------------------------------------------------------------------------

def _hidden(output: Any, where: str) -> torch.Tensor:
    """The activations in a module's output: the tensor itself, or the first item of a tuple (Hugging Face)."""
    hidden = output[0] if isinstance(output, (tuple, list)) and output else output
    if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point() or hidden.dim() < 2:
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ModelError(f"site {where!r} does not output activations of shape (..., width): got {shape}")
    return hidden


@contextmanager
def capture(model: nn.Module, sites: Iterable[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the activations at ``sites`` (each call appends one ``(B, T, d)`` tensor, detached) while inside."""
    found = {site: resolve_site(model, site) for site in sites}
    seen: dict[str, list[torch.Tensor]] = {site: [] for site in found}
    handles = []
    for site, (_, module) in found.items():
        def hook(_m: nn.Module, _i: Any, output: Any, site: str = site) -> None:
            seen[site].append(_hidden(output, site).detach())
        handles.append(module.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextmanager
def replace_activations(model: nn.Module, site: str,
                        fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside the block, the activations at ``site`` are replaced by ``fn(activations)`` (same shape) for
    everything downstream: how an SAE is spliced into a model.

    Raises:
        ModelError: ``fn`` changed the activations' shape.
    """
    _, module = resolve_site(model, site)

    def hook(_m: nn.Module, _i: Any, output: Any) -> Any:
        hidden = _hidden(output, site)
        new = fn(hidden)
        if new.shape != hidden.shape:
            raise ModelError(f"the replacement at site {site!r} has shape {tuple(new.shape)}; the activations "
                             f"have {tuple(hidden.shape)}")
        new = new.to(hidden.dtype)
        if isinstance(output, tuple):
            return (new, *output[1:])
        if isinstance(output, list):
            return [new, *output[1:]]
        return new

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# --- batches ------------------------------------------------------------------------------------------------

def _check_batch(batch: Any) -> None:
    if isinstance(batch, Mapping):
        if "input_ids" not in batch and "inputs_embeds" not in batch:
            raise DataError(f"a mapping batch needs 'input_ids'; got the keys {sorted(batch)}")
    elif not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise DataError(f"a batch is (inputs, targets) or a mapping of keyword inputs; got {type(batch).__name__}")


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def run_batch(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's output logits for ``batch`` (the first item when it returns a tuple)."""
    _check_batch(batch)
    device = _device(model)
    if isinstance(batch, Mapping):
        accepted = inspect.signature(model.forward).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        kwargs = {k: v.to(device) for k, v in batch.items() if k != "labels" and (takes_any or k in accepted)}
        out = model(**kwargs)
    else:
        out = model(batch[0].to(device))
    logits = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor):
        raise ModelError(f"{type(model).__name__} returned {type(out).__name__}; expected logits (a tensor)")
    return logits


def batch_mask(batch: Batch) -> torch.Tensor | None:
    """The (B, T) bool mask of real (not padding) positions, or None when every position is real."""
    if isinstance(batch, Mapping) and "attention_mask" in batch:
        return batch["attention_mask"].bool()
    return None


def batch_tokens(batch: Batch) -> torch.Tensor | None:
    """The (B, T) token ids of ``batch``, when it has them."""
    if isinstance(batch, Mapping):
        return batch.get("input_ids")
    x = batch[0]
    return x if not x.is_floating_point() else None


def batch_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor | None:
    """Mean cross-entropy of ``logits`` against the batch's targets (``y`` or ``labels``); None without targets.

    Logits (B, T, V) with targets (B, T) (a language model) or logits (B, C) with labels (B,) (a classifier).
    """
    targets = batch.get("labels") if isinstance(batch, Mapping) else batch[1]
    if targets is None:
        return None
    targets = targets.to(logits.device)
    if targets.shape != logits.shape[:-1]:
        raise DataError(f"targets of shape {tuple(targets.shape)} do not match logits of shape {tuple(logits.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


@torch.no_grad()
def collect_activations(model: nn.Module, batches: Iterable[Batch], site: str,
                        max_tokens: int | None = None) -> torch.Tensor:
    """The activations at ``site`` of every real token of ``batches``: (N, d) float32, computed in eval mode.

    Stops once ``max_tokens`` tokens are collected (the last batch is cut).

    Raises:
        ConfigError: no such site. DataError: no batches, or no real tokens in them.
    """
    resolve_site(model, site)
    out: list[torch.Tensor] = []
    n = 0
    with eval_mode(model), capture(model, [site]) as seen:
        for batch in batches:
            run_batch(model, batch)
            acts = seen[site].pop()
            mask = batch_mask(batch)
            flat = acts[mask.to(acts.device)] if mask is not None else acts.reshape(-1, acts.shape[-1])
            if max_tokens is not None:
                flat = flat[: max_tokens - n]
            out.append(flat.float().cpu())
            n += len(flat)
            if max_tokens is not None and n >= max_tokens:
                break
    if n == 0:
        raise DataError(f"no activations collected at site {site!r}: the batches were empty or all padding")
    return torch.cat(out)
