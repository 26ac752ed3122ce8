"""Calibration batches for a run's model and data (text classifiers, character LMs, arrays)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nnforge.data import ArrayClassification, CharCorpus
from nnforge.errors import StepFailedError

__all__ = ["calibration_batches"]


def calibration_batches(ctx: Any, n_batches: int, batch_size: int = 16
                        ) -> tuple[list[Any], Callable[[torch.nn.Module, Any], Any]]:
    """``n_batches`` training batches and the ``forward(model, batch)`` that runs one (cached in ``ctx.shared``)."""
    key = ("calibration", n_batches, batch_size)
    if key in ctx.shared:
        return ctx.shared[key]  # type: ignore[no-any-return]
    dataset = ctx.data.get("dataset")
    gen = torch.Generator().manual_seed(ctx.seed + 17)
    forward: Callable[[torch.nn.Module, Any], Any]
    if hasattr(ctx.model, "tokenize") and "train" in ctx.data and hasattr(ctx.data["train"], "texts"):
        texts = list(ctx.data["train"].texts)
        order = torch.randperm(len(texts), generator=gen)[: n_batches * batch_size].tolist()
        picked = [texts[i] for i in order]
        batches: list[Any] = [ctx.model.tokenize(picked[i:i + batch_size]) for i in range(0, len(picked), batch_size)]
        forward = lambda m, b: m(b["input_ids"], b["attention_mask"])  # noqa: E731
    elif isinstance(dataset, CharCorpus):
        block = getattr(getattr(ctx.model, "config", None), "block_size", 64)
        batches = [dataset.batch("train", batch_size, block, gen)[0] for _ in range(n_batches)]  # inputs only
        forward = lambda m, b: m(b)  # noqa: E731
    elif isinstance(dataset, ArrayClassification):
        x = torch.from_numpy(dataset.splits["train"][0])
        rows = torch.randperm(len(x), generator=gen)[: n_batches * batch_size]
        batches = list(x[rows].split(batch_size))
        forward = lambda m, b: m(b)  # noqa: E731
    else:
        raise StepFailedError("no calibration data: this step needs a text, character or array dataset")
    ctx.shared[key] = (batches, forward)
    return batches, forward
