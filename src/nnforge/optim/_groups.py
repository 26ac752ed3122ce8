"""Splitting a model's parameters into hidden weight matrices and the rest, for hybrid optimizers.

Matrix optimizers (Muon, SOAP-style preconditioners) are meant for the hidden weight matrices of a
network; embeddings, the output layer, norms and biases train better with an Adam-type rule. The rule
used here, in order:

1. only parameters with ``requires_grad`` are kept, each once (tied parameters are one parameter);
2. a parameter with fewer than 2 dimensions (biases, norm gains) goes to the rest;
3. the weight of any ``nn.Embedding`` goes to the rest, and so does every parameter that is the same
   tensor as an embedding weight (a tied LM head);
4. the weight of the output layer goes to the rest: the last ``nn.Linear`` in module order, or any
   ``nn.Linear`` whose ``out_features`` equals a *token* embedding's ``num_embeddings`` (an untied LM
   head). Position and segment embeddings do not count: an embedding whose module name (last part) is
   ``wpe`` or starts with ``pos``, ``token_type`` or ``segment`` (after ``_``: ``embed_positions``) is
   one, so a hidden ``nn.Linear`` whose width happens to equal the context length stays hidden;
5. every other parameter with 2 or more dimensions is a hidden matrix (conv kernels are flattened to
   ``(out, in * k * k)`` by the optimizers that need 2-D).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from nnforge.errors import ConfigError

__all__ = ["param_groups_for", "MATRIX_KEY"]

MATRIX_KEY = "use_muon"
_KINDS = ("muon",)
_NOT_VOCABULARY = re.compile(r"(^|_)(wpe|pos|token_type|segment)", re.IGNORECASE)


def _rest_ids(model: nn.Module) -> set[int]:
    """ids of the ≥2-D parameters that are embeddings or the output layer (rules 3 and 4)."""
    embeddings = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    rest = {id(m.weight) for _, m in embeddings}
    vocab_sizes = {m.num_embeddings for n, m in embeddings if not _NOT_VOCABULARY.search(n.rsplit(".", 1)[-1])}
    if linears:
        rest.add(id(linears[-1].weight))
    rest.update(id(m.weight) for m in linears if m.out_features in vocab_sizes)
    return rest


def param_groups_for(model: nn.Module, kind: str = "muon") -> list[dict[str, Any]]:
    """Split ``model``'s parameters into hidden matrices and the rest (rule in the module docstring).

    Args:
        model: any ``nn.Module``.
        kind: the optimizer family the split is for; ``"muon"`` (also right for SOAP-style optimizers).

    Returns:
        Param groups ``[{"params": hidden, "use_muon": True}, {"params": rest, "use_muon": False}]``,
        leaving out a group that would be empty. Hybrid optimizers read the ``use_muon`` flag.

    Raises:
        ConfigError: ``kind`` is unknown.
    """
    if kind not in _KINDS:
        raise ConfigError(f"param_groups_for: unknown kind {kind!r}. Known: {', '.join(_KINDS)}.")
    rest_ids = _rest_ids(model)
    hidden: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for p in model.parameters():  # yields each (tied) parameter once
        if not p.requires_grad:
            continue
        (hidden if p.ndim >= 2 and p.numel() and id(p) not in rest_ids else rest).append(p)
    groups = [{"params": hidden, MATRIX_KEY: True}, {"params": rest, MATRIX_KEY: False}]
    return [g for g in groups if g["params"]]
