"""Run an int8-quantized BERT-family encoder in one compiled call (``encoder.cpp``).

Eager PyTorch spends most of a short sentence's forward pass dispatching ~150 small operations; ONNX
Runtime's fastest int8 path rounds activations per tensor, which costs MiniLM a lot of fidelity. This runner
does the whole encoder in C++ with the int8 weights of nnforge's W8A8 (or int8 weight-only) layers, int8
activations per token and per block of 64 inputs, and AVX-512 VNNI dot products (portable C++ on other CPUs:
:attr:`NativeEncoder.backend` says which runs).
"""

from __future__ import annotations

import copy
import ctypes
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from nnforge.compress.quantize.kernels import compile_library
from nnforge.compress.quantize.weight_only.layer import QuantizedEmbedding, QuantizedLinear
from nnforge.errors import ConfigError, NnforgeError

__all__ = ["NativeEncoder", "NativeEncoderModule", "with_native_encoder", "linear_forward", "amx"]

SOURCE = Path(__file__).with_name("encoder.cpp")
_vp, _int, _float = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


class _Linear(ctypes.Structure):
    _fields_ = [("w", _vp), ("wscale", _vp), ("bias", _vp), ("inv_smooth", _vp), ("ws8", _vp), ("N", _int),
                ("K", _int)]


class _Layer(ctypes.Structure):
    _fields_ = [("qkv", _Linear), ("out", _Linear), ("up", _Linear), ("down", _Linear),
                ("ln1_w", _vp), ("ln1_b", _vp), ("ln2_w", _vp), ("ln2_b", _vp)]


class _Encoder(ctypes.Structure):
    _fields_ = [("word", _vp), ("word_codes", _vp), ("word_scale", _vp), ("pos", _vp), ("type", _vp),
                ("ln_w", _vp), ("ln_b", _vp), ("layers", _vp), ("V", _int), ("P", _int), ("n_types", _int),
                ("H", _int), ("heads", _int), ("n_layers", _int), ("I", _int), ("eps", _float)]


def _library(isa: str | None) -> tuple[ctypes.CDLL | None, str]:
    lib, name = compile_library(SOURCE, isa)
    if lib is not None:
        lib.nnf_encoder_forward.restype = _int
        lib.nnf_encoder_forward.argtypes = [_vp, _vp, _vp, _vp, _int, _int, _vp, _int]
        lib.nnf_linear.restype = _int
        lib.nnf_linear.argtypes = [_vp, _vp, _int, _vp, _int]
        lib.nnf_amx.restype = _int
        lib.nnf_amx.argtypes = [_int]
    return lib, name


def amx(enable: bool | None = None, *, isa: str | None = None) -> bool:
    """Whether the compiled encoder's linear layers run on AMX tiles (Intel Sapphire Rapids and later, where
    the compiler targets AMX-INT8 and Linux grants the tile state); ``enable`` switches them off or back on for
    this process (the VNNI path gives the same bits, slower). ``NNFORGE_AMX=0`` in the environment keeps them off.
    ``False`` where the native runtime does not run.
    """
    lib, _ = _library(isa)
    if lib is None:
        return False
    return bool(lib.nnf_amx(-1 if enable is None else int(enable)))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _keep_f32(keep: list[torch.Tensor], t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    t = t.detach().to(torch.float32).contiguous()
    keep.append(t)
    return t.data_ptr()


def _pack_linear(keep: list[torch.Tensor], modules: list[nn.Module], where: str, signed: bool = False) -> _Linear:
    """One compiled-layer struct for ``layers`` that read the same input (stacked along N); tensors kept in ``keep``.
    ``signed``: also a signed copy of the codes, for the AMX path (where it runs: :func:`amx`)."""
    layers: list[QuantizedLinear] = []
    for i, layer in enumerate(modules):
        if not isinstance(layer, QuantizedLinear) or layer.fmt != "int8" or layer.group_size is not None \
                or layer.packed.zeros is not None or layer.act_quant == "static":
            raise ConfigError(f"NativeEncoder: {where}[{i}] is {type(layer).__name__}"
                              f"{'' if not isinstance(layer, QuantizedLinear) else ' ' + layer.extra_repr()}; "
                              "it runs int8 layers with one scale per output row and dynamic or no activation "
                              "quantization: quantize_(model, W8A8Config()) or Int8WeightOnlyConfig() first.")
        layers.append(layer)
    smooth = [layer.input_scale for layer in layers]
    first = smooth[0]
    if any(s is not first and (s is None or first is None or not torch.equal(s, first)) for s in smooth):
        raise ConfigError(f"NativeEncoder: the layers of {where} read one input but have different SmoothQuant "
                          "scales; W8A8Config gives layers that share an input one scale.")
    K = layers[0].in_features
    N = sum(layer.out_features for layer in layers)
    if K % 64 or N % 16:
        raise ConfigError(f"NativeEncoder: {where} is {N}x{K}; the compiled code needs K % 64 == 0 and N % 16 == 0.")
    codes = torch.cat([layer.packed.data[:, :K] for layer in layers])  # (N, K) u8 = w + 128
    tiles = codes.reshape(N // 16, 16, K // 4, 4).permute(0, 2, 1, 3).contiguous()
    keep.append(tiles)
    ws8 = None
    if signed:  # the codes as AMX's signed x signed tile product reads them
        ws8 = (tiles.to(torch.int16) - 128).to(torch.int8)
        keep.append(ws8)
    wscale = torch.cat([layer.packed.scales[:, 0].float() for layer in layers])
    has_bias = [layer.bias is not None for layer in layers]
    bias = torch.cat([layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
                      for layer in layers]) if any(has_bias) else None
    return _Linear(tiles.data_ptr(), _keep_f32(keep, wscale), _keep_f32(keep, bias),
                   _keep_f32(keep, None if first is None else 1.0 / first.float()),
                   None if ws8 is None else ws8.data_ptr(), N, K)


# Hugging Face model types whose positions start after the padding index (RoBERTa's scheme), not at 0
_PADDED_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                               "data2vec-text", "longformer", "mpnet", "ibert", "luke", "markuplm", "layoutlmv3",
                               "bridgetower", "clap", "esm"})


def _check_bert_positions(model: nn.Module, emb: nn.Module, cfg: Any) -> None:
    """Refuse encoders whose position ids are not BERT's ``0 .. T-1``: the compiled code adds row ``t`` of the
    position table to token ``t``. RoBERTa-family embeddings number the real tokens from ``padding_idx + 1``
    (padding tokens get ``padding_idx``), so running them here would give silently wrong hidden states."""
    model_type = str(getattr(cfg, "model_type", "") or "").lower()
    pos_pad = getattr(getattr(emb, "position_embeddings", None), "padding_idx", None)
    why = None
    if model_type in _PADDED_POSITIONS:
        why = f"its config.model_type is {model_type!r}"
    elif pos_pad is not None:
        why = f"embeddings.position_embeddings has padding_idx={pos_pad}"
    elif getattr(emb, "padding_idx", None) is not None or hasattr(emb, "create_position_ids_from_input_ids"):
        why = f"{type(emb).__name__} derives position ids from the padding index"
    if why is not None:
        raise ConfigError(f"NativeEncoder runs BERT-style absolute positions (token t reads position t); "
                          f"{type(model).__name__} numbers its positions differently (RoBERTa-style, starting after "
                          f"the padding index): {why}. Run the quantized PyTorch module instead.")


def _hf_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                token_type_ids: torch.Tensor | None) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state


def linear_forward(layer: QuantizedLinear, x: torch.Tensor, *, isa: str | None = None,
                   num_threads: int | None = None) -> torch.Tensor:
    """``x (M, K)`` through one int8 layer as the compiled encoder computes it (activations per block of 64).

    For tests and for checking a layer before compiling a model; raises ``NnforgeError`` without a compiler.
    """
    lib, name = _library(isa)
    if lib is None:
        raise NnforgeError("the native runtime is not available here (no C++ compiler, or isa='torch').")
    keep: list[torch.Tensor] = []
    lin = _pack_linear(keep, [layer], "layer", signed=bool(lib.nnf_amx(-1)))
    x = x.detach().to(torch.float32).contiguous()
    y = torch.empty(x.shape[0], lin.N, dtype=torch.float32)
    rc = lib.nnf_linear(ctypes.byref(lin), x.data_ptr(), x.shape[0], y.data_ptr(), num_threads or torch.get_num_threads())
    if rc != 0:
        raise NnforgeError(f"the native linear kernel rejected its arguments (code {rc}).")
    return y


class NativeEncoder:
    """The last hidden state of a BERT-family encoder whose Linear layers are nnforge int8 layers.

    ``model`` is a Hugging Face ``BertModel``-like module (``embeddings`` + ``encoder.layer``; post-LayerNorm
    blocks, absolute positions, exact GELU) after ``quantize_(model, W8A8Config(...))`` or
    ``Int8WeightOnlyConfig()`` (int8, one scale per output row). Embeddings may be float or quantized.
    Query, key and value must share their SmoothQuant scale (W8A8Config does this): they run as one matmul.

    Activations are rounded to int8 per token and per block of 64 inputs inside the compiled code, so the
    result is close to, not equal to, the PyTorch module's (which rounds per token). Without a C++
    compiler (or with ``isa="torch"``) the runner calls the module itself; :attr:`backend` says which.

    >>> enc = NativeEncoder(quantized_bert)                                     # doctest: +SKIP
    >>> hidden = enc(input_ids, attention_mask, token_type_ids)                 # doctest: +SKIP

    Raises:
        ConfigError: the model is not a BERT-family encoder with int8 per-row Linear layers (names the part).
    """

    def __init__(self, model: nn.Module, *, num_threads: int | None = None, isa: str | None = None) -> None:
        self.model = model
        self.num_threads = num_threads
        self._keep: list[torch.Tensor] = []
        self._lib, isa_name = _library(isa)
        # validates the model even when no compiler is there; the AMX path reads a signed copy of the weights
        self._struct = self._build(model, signed=self._lib is not None and bool(self._lib.nnf_amx(-1)))
        # the path the compiled code really runs: "native-avx512vnni" (with "+amx" where the linear layers run on
        # AMX tiles) or "native-scalar" (portable C++, also what an AVX2 build runs: the encoder has no AVX2
        # code), or "torch"
        self.backend = "torch"
        if self._lib is not None:
            self.backend = f"native-{isa_name}" + ("+amx" if self._lib.nnf_amx(-1) else "")

    # ---------------------------------------------------------------------------------------------- build
    def _table(self, emb: nn.Module, where: str, width: int) -> torch.Tensor:
        if isinstance(emb, QuantizedEmbedding):
            table = emb.dequantize()
        elif isinstance(emb, nn.Embedding):
            table = emb.weight
        else:
            raise ConfigError(f"NativeEncoder: {where} is {type(emb).__name__}, not an embedding.")
        if table.dim() != 2 or table.shape[1] != width:
            raise ConfigError(f"NativeEncoder: {where} is {tuple(table.shape)}; the hidden size is {width}.")
        return table

    def _build(self, model: nn.Module, signed: bool) -> _Encoder:
        emb, enc = getattr(model, "embeddings", None), getattr(model, "encoder", None)
        cfg = getattr(model, "config", None)
        if emb is None or enc is None or not hasattr(enc, "layer") or cfg is None:
            raise ConfigError(f"NativeEncoder needs a BERT-family encoder (embeddings, encoder.layer, config); "
                              f"got {type(model).__name__}.")
        if getattr(cfg, "is_decoder", False) or getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ConfigError("NativeEncoder runs encoder-only models with absolute position embeddings.")
        _check_bert_positions(model, emb, cfg)
        if getattr(cfg, "hidden_act", None) != "gelu":
            raise ConfigError(f"NativeEncoder implements the exact GELU; this model uses {cfg.hidden_act!r}.")
        H, heads = int(cfg.hidden_size), int(cfg.num_attention_heads)
        if H % heads or H % 64:
            raise ConfigError(f"NativeEncoder: hidden size {H} must be a multiple of 64 and of the {heads} heads.")
        word = emb.word_embeddings
        if isinstance(word, QuantizedEmbedding) and word.fmt == "int8" and word.group_size is None \
                and word.packed.zeros is None and word.embedding_dim == H:
            codes = word.packed.data[:, :word.embedding_dim].contiguous()
            self._keep.append(codes)
            word_f, word_codes, word_scale = None, codes.data_ptr(), _keep_f32(self._keep, word.packed.scales[:, 0].float())
        else:
            word_f, word_codes, word_scale = _keep_f32(self._keep, self._table(word, "embeddings.word_embeddings", H)), None, None
        pos = self._table(emb.position_embeddings, "embeddings.position_embeddings", H)
        types = self._table(emb.token_type_embeddings, "embeddings.token_type_embeddings", H)
        layers = []
        for i, blk in enumerate(enc.layer):
            att = blk.attention
            where = f"encoder.layer.{i}"
            if getattr(att.self, "num_attention_heads", heads) != heads:
                raise ConfigError(f"NativeEncoder: {where} has pruned attention heads.")
            layer = _Layer(
                _pack_linear(self._keep, [att.self.query, att.self.key, att.self.value], f"{where}.attention.self.(query, key, value)", signed),
                _pack_linear(self._keep, [att.output.dense], f"{where}.attention.output.dense", signed),
                _pack_linear(self._keep, [blk.intermediate.dense], f"{where}.intermediate.dense", signed),
                _pack_linear(self._keep, [blk.output.dense], f"{where}.output.dense", signed),
                _keep_f32(self._keep, att.output.LayerNorm.weight), _keep_f32(self._keep, att.output.LayerNorm.bias),
                _keep_f32(self._keep, blk.output.LayerNorm.weight), _keep_f32(self._keep, blk.output.LayerNorm.bias))
            # the compiled code trusts these shapes (a pruned FFN may differ per layer, so sizes are checked)
            shapes = [(layer.qkv.N, layer.qkv.K), (layer.out.N, layer.out.K), (layer.up.K,), (layer.down.N, layer.down.K)]
            if shapes != [(3 * H, H), (H, H), (H,), (H, layer.up.N)]:
                raise ConfigError(f"NativeEncoder: {where} has layer shapes (N, K) {shapes}, not those of a BERT "
                                  f"block of hidden size {H}.")
            layers.append(layer)
        self._layers = (_Layer * len(layers))(*layers)
        inter = max((layer.up.N for layer in layers), default=H)
        return _Encoder(word_f, word_codes, word_scale, _keep_f32(self._keep, pos), _keep_f32(self._keep, types),
                        _keep_f32(self._keep, emb.LayerNorm.weight), _keep_f32(self._keep, emb.LayerNorm.bias),
                        ctypes.addressof(self._layers), int(word.num_embeddings), int(pos.shape[0]), int(types.shape[0]),
                        H, heads, len(layers), int(inter), float(emb.LayerNorm.eps))

    # -------------------------------------------------------------------------------------------- forward
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden state ``(B, T, H)`` float32 for ``input_ids (B, T)``.

        Raises:
            ConfigError: a tensor's shape or dtype does not fit, or an id / token type is out of range.
        """
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ConfigError(f"input_ids must be a 2-D integer tensor (batch, tokens); got {input_ids.dtype} "
                              f"of shape {tuple(input_ids.shape)}.")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and t.shape != input_ids.shape:
                raise ConfigError(f"{name} has shape {tuple(t.shape)}; input_ids has {tuple(input_ids.shape)}.")
        B, T = input_ids.shape
        if T > self._struct.P:
            raise ConfigError(f"input_ids has {T} tokens; the model has {self._struct.P} positions.")
        if B == 0 or T == 0:  # nothing to compute: an empty result, as the PyTorch module gives
            return torch.empty(B, T, self._struct.H, dtype=torch.float32)
        if self._lib is None:
            return _hf_forward(self.model, input_ids, attention_mask, token_type_ids)
        ids = input_ids.to(torch.int64).contiguous()
        mask = None if attention_mask is None else attention_mask.to(torch.int64).contiguous()
        types = None if token_type_ids is None else token_type_ids.to(torch.int64).contiguous()
        out = torch.empty(B, T, self._struct.H, dtype=torch.float32)
        rc = self._lib.nnf_encoder_forward(ctypes.byref(self._struct), ids.data_ptr(), _ptr(mask), _ptr(types), B, T,
                                           out.data_ptr(), self.num_threads or torch.get_num_threads())
        if rc == -2:
            raise ConfigError(f"input_ids or token_type_ids out of range (vocabulary {self._struct.V}, "
                              f"{self._struct.n_types} token types).")
        if rc != 0:
            raise NnforgeError(f"the native encoder rejected its inputs (code {rc}) for shape {(B, T)}.")
        return out

    def verdict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, *, repeats: int = 30,
                alpha: float = 0.05) -> dict[str, Any]:
        """Is it really faster? This runtime and the PyTorch module on these inputs, timed interleaved.

        Returns ``{"native_ms", "module_ms", "speedup", "speedup_ci", "p_value", "verdict", "backend",
        "shape"}``: medians (ms), their ratio with its bootstrap interval, and ``"faster"`` / ``"slower"`` /
        ``"not significant"`` from a Mann-Whitney test at level ``alpha``
        (:func:`nnforge.hardware.speed_verdict`).
        """
        from nnforge.hardware import time_verdict

        v = time_verdict(lambda: self(input_ids, attention_mask, token_type_ids),
                         lambda: _hf_forward(self.model, input_ids, attention_mask, token_type_ids),
                         repeats=repeats, alpha=alpha)
        return {"native_ms": v.pop("candidate_ms"), "module_ms": v.pop("baseline_ms"), **v,
                "backend": self.backend, "shape": tuple(input_ids.shape)}


class NativeEncoderModule(nn.Module):
    """A drop-in for a Hugging Face BERT encoder inside a larger model: the same call, ``last_hidden_state`` out.

    Inference only (no gradients flow through the compiled code). It registers no parameters: the wrapped
    encoder's tensors are referenced, so a model holding this module saves no weights for it.
    """

    def __init__(self, encoder: nn.Module, **options: Any) -> None:
        super().__init__()
        self.runtime = NativeEncoder(encoder, **options)
        self.config = encoder.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.runtime(input_ids, attention_mask, token_type_ids))


def with_native_encoder(model: nn.Module, attr: str = "encoder", **options: Any) -> nn.Module:
    """A shallow copy of ``model`` whose ``attr`` submodule (an int8 BERT-family encoder) runs natively.

    For nnforge's ``TextClassifier`` (``load_run(run).model("int8")``): ``forward``, ``embed`` and
    ``predict_proba`` of the copy use the compiled encoder; the original model is not changed.

    >>> fast = with_native_encoder(classifier)                                  # doctest: +SKIP
    >>> fast.predict_proba(["To be, or not to be"])                             # doctest: +SKIP

    Raises:
        ConfigError: ``model`` has no submodule ``attr``, or it is not an encoder :class:`NativeEncoder` runs.
    """
    inner = model._modules.get(attr)
    if inner is None:
        raise ConfigError(f"with_native_encoder: {type(model).__name__} has no submodule {attr!r}.")
    new = copy.copy(model)
    new._modules = dict(model._modules)  # the copy's own submodule table: the original keeps its encoder
    new._modules[attr] = NativeEncoderModule(inner, **options)
    return new


def native_variant(model: nn.Module, **options: Any) -> tuple[nn.Module | None, str]:
    """``(copy of model whose encoder runs natively, backend)`` when the native runtime runs it here, else
    ``(None, why not)``: a float or int4 model, another architecture, or no C++ compiler."""
    try:
        fast = with_native_encoder(model, **options)
    except NnforgeError as exc:
        return None, str(exc)
    backend = fast._modules["encoder"].runtime.backend  # type: ignore[union-attr]
    if backend == "torch":
        return None, "the native runtime is not built here (no C++ compiler, or $NNFORGE_KERNELS=torch)"
    return fast.eval(), str(backend)
