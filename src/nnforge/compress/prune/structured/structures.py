"""The prunable structures of a model, and how to cut one physically.

A structure is a set of units (attention heads, FFN neurons, conv channels, or one whole block) that can be
removed together: each unit owns some output rows of its *producers* (the Linear or Conv2d layers that make
it), a channel of any per-channel norm after them, and some input columns of its *consumer* (the layer that
reads it). Cutting a unit removes all of those, so the model computes exactly what the dense model computes
with that unit's outputs masked to zero, with smaller matrices.

Found by architecture: char-GPT attention, MLPs and blocks; BERT-family layers (Hugging Face: MiniLM, BERT,
RoBERTa); and, for any model ``torch.fx`` can trace, chains Linear/Conv2d → element-wise ops → Linear/Conv2d
(through a BatchNorm, pooling, and a flatten before a Linear).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.compress._transform import set_child
from nnforge.compress.prune.structured.layer import PrunedCausalSelfAttention, RemovedBlock

__all__ = ["Structure", "find_structures", "slice_module", "weight_of"]

log = logging.getLogger(__name__)


def weight_of(model: nn.Module, name: str) -> torch.Tensor:
    """The ``weight`` parameter of submodule ``name``."""
    w = model.get_submodule(name).weight
    assert isinstance(w, torch.Tensor)  # every producer, norm and consumer is a Linear, Conv2d or BatchNorm
    return w


@dataclass
class Structure:
    """Units that are removed together; see the module docstring.

    Args:
        name: the key in ``StructuredPruneConfig.shapes`` (the attention module, an FFN's first Linear, a conv,
            a block).
        kind: ``heads``, ``ffn``, ``channels`` or ``block``.
        units: how many units it has now.
        producers: modules whose output rows make the units (``parts`` blocks of ``units * width`` rows each:
            3 for a fused q, k, v projection).
        consumer: the module reading the units (``cons_width`` input columns per unit: a head's width, or the
            spatial positions of a channel flattened into a Linear).
        norms: per-channel modules between producer and consumer (BatchNorm), cut to the kept units.
        finish: ``finish(model, kept)`` after the cut (a head count to update, a module to replace).
    """

    name: str
    kind: str
    units: int
    producers: list[str] = field(default_factory=list)
    consumer: str = ""
    parts: int = 1
    width: int = 1
    cons_width: int = 1
    norms: list[str] = field(default_factory=list)
    finish: Callable[[nn.Module, int], None] | None = None

    @property
    def modules(self) -> list[str]:
        """The parameter-holding modules a cut changes (a block: the block itself)."""
        return [*self.producers, *self.norms, self.consumer] if self.kind != "block" else [self.name]

    def rows(self, keep: torch.Tensor) -> torch.Tensor:
        """Output rows of each producer that units ``keep`` own, in the producer's order."""
        d = torch.arange(self.width)
        per_part = (keep[:, None] * self.width + d).flatten()  # (k·width,)
        return torch.cat([p * self.units * self.width + per_part for p in range(self.parts)])

    def cols(self, keep: torch.Tensor) -> torch.Tensor:
        """Input columns (or channels) of the consumer that units ``keep`` own."""
        return (keep[:, None] * self.cons_width + torch.arange(self.cons_width)).flatten()

    def cut(self, model: nn.Module, keep: torch.Tensor) -> None:
        """Keep units ``keep`` (sorted indices) and remove the others physically."""
        if self.kind == "block":
            if len(keep) == 0:
                set_child(model, self.name, RemovedBlock(type(model.get_submodule(self.name)).__name__))
            return
        for p in self.producers:
            set_child(model, p, slice_module(model.get_submodule(p), out_idx=self.rows(keep)))
        for n in self.norms:
            set_child(model, n, slice_module(model.get_submodule(n), out_idx=keep))
        set_child(model, self.consumer, slice_module(model.get_submodule(self.consumer), in_idx=self.cols(keep)))
        if self.finish is not None:
            self.finish(model, len(keep))
        self.units = len(keep)

    def mask(self, model: nn.Module, keep: torch.Tensor) -> None:
        """Zero the consumer's input columns of the units not in ``keep`` (the dense, masked equivalent of
        :meth:`cut`: what a mask-only pruner would store)."""
        w = weight_of(model, self.consumer)
        drop = torch.ones(w.shape[1], dtype=torch.bool)
        drop[self.cols(keep)] = False
        with torch.no_grad():
            w[:, drop] = 0


# --- slicing layers ---------------------------------------------------------------------------------------

def slice_module(mod: nn.Module, *, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Module:
    """A new Linear, Conv2d or BatchNorm with only output rows ``out_idx`` and input columns ``in_idx``."""
    dev = next(iter(mod.parameters()), torch.empty(0)).device
    o = out_idx.to(dev) if out_idx is not None else None
    i = in_idx.to(dev) if in_idx is not None else None
    if isinstance(mod, nn.Linear):
        w = mod.weight.detach()
        w = w[o] if o is not None else w
        w = w[:, i] if i is not None else w
        new: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=mod.bias is not None, device="meta")
        new.weight = nn.Parameter(w.clone(), requires_grad=mod.weight.requires_grad)
        if mod.bias is not None:
            b = mod.bias.detach()
            new.bias = nn.Parameter((b[o] if o is not None else b).clone(), requires_grad=mod.bias.requires_grad)
        return new
    if isinstance(mod, nn.Conv2d):
        w = mod.weight.detach()
        w = w[o] if o is not None else w
        w = w[:, i] if i is not None else w
        new = nn.Conv2d(w.shape[1], w.shape[0], mod.kernel_size, mod.stride, mod.padding,  # type: ignore[arg-type]
                        mod.dilation, 1, bias=mod.bias is not None,  # type: ignore[arg-type]
                        padding_mode=mod.padding_mode, device="meta")
        new.weight = nn.Parameter(w.clone(), requires_grad=mod.weight.requires_grad)
        if mod.bias is not None:
            b = mod.bias.detach()
            new.bias = nn.Parameter((b[o] if o is not None else b).clone(), requires_grad=mod.bias.requires_grad)
        return new
    if isinstance(mod, nn.modules.batchnorm._BatchNorm) and o is not None:
        bn = type(mod)(len(o), mod.eps, mod.momentum, mod.affine, mod.track_running_stats)
        bn = bn.to(dev)
        with torch.no_grad():
            for key, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
                dst = getattr(bn, key)
                if t.dim() == 0:
                    dst.copy_(t)
                else:
                    dst.data = t.detach()[o].clone()
        bn.train(mod.training)
        return bn
    raise TypeError(f"cannot slice a {type(mod).__name__}")


# --- architectures ----------------------------------------------------------------------------------------

def _is_gpt_attention(m: nn.Module) -> bool:
    return (isinstance(getattr(m, "c_attn", None), nn.Linear) and isinstance(getattr(m, "c_proj", None), nn.Linear)
            and isinstance(getattr(m, "n_head", None), int))


def _gpt_attention(name: str, m: Any) -> Structure:
    hs = int(getattr(m, "head_dim", 0)) or m.c_attn.out_features // 3 // m.n_head

    def finish(model: nn.Module, kept: int) -> None:
        old: Any = model.get_submodule(name)
        new = PrunedCausalSelfAttention(old.c_attn.in_features, kept, hs, bias=old.c_attn.bias is not None,
                                        dropout=float(old.dropout))
        new.c_attn, new.c_proj, new.resid_dropout = old.c_attn, old.c_proj, old.resid_dropout
        new.train(old.training)
        set_child(model, name, new)

    return Structure(name, "heads", m.n_head, [f"{name}.c_attn"], f"{name}.c_proj", parts=3, width=hs,
                     cons_width=hs, finish=finish)


def _is_bert_layer(m: nn.Module) -> bool:
    att = getattr(getattr(m, "attention", None), "self", None)
    return (all(isinstance(getattr(att, p, None), nn.Linear) for p in ("query", "key", "value"))
            and isinstance(getattr(getattr(m, "intermediate", None), "dense", None), nn.Linear)
            and isinstance(getattr(getattr(m, "output", None), "dense", None), nn.Linear)
            and isinstance(getattr(att, "attention_head_size", None), int))


def _bert_layer(name: str, m: Any) -> list[Structure]:
    att = m.attention.self
    hs = int(att.attention_head_size)
    a = f"{name}.attention.self"

    def finish(model: nn.Module, kept: int) -> None:
        mod: Any = model.get_submodule(a)
        mod.num_attention_heads, mod.all_head_size = kept, kept * hs  # read by the forward and by ONNX export

    heads = Structure(a, "heads", int(att.num_attention_heads), [f"{a}.query", f"{a}.key", f"{a}.value"],
                      f"{name}.attention.output.dense", width=hs, cons_width=hs, finish=finish)
    ffn = Structure(f"{name}.intermediate.dense", "ffn", m.intermediate.dense.out_features,
                    [f"{name}.intermediate.dense"], f"{name}.output.dense")
    return [heads, ffn]


def _blocks(model: nn.Module) -> list[Structure]:
    """Transformer blocks held in a ModuleList (char-GPT's ``transformer.h``, BERT's ``encoder.layer``)."""
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList):
            continue
        for i, child in enumerate(m):
            attn = getattr(child, "attn", None)
            is_gpt = isinstance(attn, nn.Module) and _is_gpt_attention(attn) and hasattr(child, "mlp")
            if is_gpt or _is_bert_layer(child) or isinstance(child, RemovedBlock):
                out.append(Structure(f"{name}.{i}", "block", 0 if isinstance(child, RemovedBlock) else 1))
    return out


def find_structures(model: nn.Module) -> tuple[list[Structure], str]:
    """Every prunable structure of ``model`` (blocks first), and a note when torch.fx could not trace it."""
    found: list[Structure] = _blocks(model)
    covered: set[str] = set()
    for name, m in model.named_modules():
        if _is_gpt_attention(m):
            found.append(_gpt_attention(name, m))
        elif isinstance(getattr(m, "c_fc", None), nn.Linear) and isinstance(getattr(m, "c_proj", None), nn.Linear):
            found.append(Structure(f"{name}.c_fc", "ffn", m.c_fc.out_features, [f"{name}.c_fc"], f"{name}.c_proj"))
        elif _is_bert_layer(m):
            found += _bert_layer(name, m)
    for s in found:
        covered.update(s.modules)
    chains, note = _fx_chains(model, covered) if not any(s.kind == "block" for s in found) else ([], "")
    return found + chains, note


# --- chains found by torch.fx -----------------------------------------------------------------------------

_PASS_MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ReLU6, nn.Hardswish, nn.ELU,
                 nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.gelu, F.silu, torch.tanh, torch.sigmoid, F.dropout, F.leaky_relu,
                   F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}


def _fx_chains(model: nn.Module, covered: set[str]) -> tuple[list[Structure], str]:
    from torch import fx

    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # tracing is best effort: a model with data-dependent control flow is not traceable
        return [], f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}), so only known architectures were searched"
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    out = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target in covered or calls[node.target] != 1:
            continue
        prod = model.get_submodule(node.target)
        if not (isinstance(prod, nn.Linear) or (isinstance(prod, nn.Conv2d) and prod.groups == 1)):
            continue
        s = _follow(model, node, calls)
        if s is not None:
            out.append(s)
    return out, ""


def _follow(model: nn.Module, node: Any, calls: dict[str, int]) -> Structure | None:
    """The chain from producer ``node`` to its one consumer, or None when it branches or meets anything else."""
    prod_name: str = node.target
    prod = model.get_submodule(prod_name)
    units = int(prod.out_features if isinstance(prod, nn.Linear) else prod.out_channels)  # type: ignore[arg-type]
    norms: list[str] = []
    flattened = False
    while len(node.users) == 1:
        node = next(iter(node.users))
        if node.op == "call_module" and calls.get(node.target) == 1:
            m = model.get_submodule(node.target)
            if isinstance(m, (nn.Linear, nn.Conv2d)) and not node.kwargs and len(node.args) == 1:
                return _consumer(node.target, m, prod_name, prod, units, norms, flattened)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_features == units and not flattened:
                norms.append(node.target)
                continue
            if isinstance(m, _PASS_MODULES) or (isinstance(m, nn.Flatten) and m.start_dim == 1):
                flattened |= isinstance(m, nn.Flatten)
                continue
        elif node.op == "call_function" and node.target in _PASS_FUNCTIONS and len(node.args) >= 1:
            continue
        elif node.op == "call_function" and node.target is torch.flatten and node.args[1:2] == (1,):
            flattened = True
            continue
        elif node.op == "call_method" and node.target in _PASS_METHODS:
            continue
        elif node.op == "call_method" and node.target == "flatten" and node.args[1:2] == (1,):
            flattened = True
            continue
        return None
    return None


def _consumer(name: str, m: nn.Module, prod_name: str, prod: nn.Module, units: int, norms: list[str],
              flattened: bool) -> Structure | None:
    kind = "channels" if isinstance(prod, nn.Conv2d) else "ffn"
    if isinstance(m, nn.Conv2d):
        if flattened or m.groups != 1 or m.in_channels != units or not isinstance(prod, nn.Conv2d):
            return None
        return Structure(prod_name, kind, units, [prod_name], name, norms=norms)
    lin: Any = m
    if isinstance(prod, nn.Conv2d):  # a channel becomes in_features / channels columns after a flatten
        if not flattened or lin.in_features % units:
            return None
        return Structure(prod_name, kind, units, [prod_name], name, cons_width=lin.in_features // units, norms=norms)
    if flattened or lin.in_features != units:
        return None
    return Structure(prod_name, kind, units, [prod_name], name, norms=norms)

