"""The native int8 encoder runtime: the compiled linear kernel against a torch model of its arithmetic, the whole
encoder against the quantized PyTorch module, the portable build against the AVX-512 one, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nnforge.compress import Int8WeightOnlyConfig, W8A8Config, quantize_
from nnforge.compress.quantize.kernels import backend
from nnforge.deploy.native import NativeEncoder, amx, with_native_encoder
from nnforge.deploy.native.encoder import linear_forward
from nnforge.errors import ConfigError

pytestmark = pytest.mark.skipif(backend() == "torch", reason="no C++ compiler: the native runtime is not built")
ISAS = ["scalar"] + (["avx512"] if backend() == "avx512vnni" else [])
AMX = "avx512" in ISAS and amx(isa="avx512")  # AMX-INT8 tiles built, and granted by Linux
VNNI = ("native-avx512vnni+amx",) if AMX else ("native-avx512vnni",)  # the name the AVX-512 build reports


def _reference(layer, x: torch.Tensor) -> torch.Tensor:
    """What the kernel is documented to compute: int8 activations per (row, block of 64), int8 weights per row."""
    if layer.input_scale is not None:
        x = x * (1.0 / layer.input_scale)
    M, K = x.shape
    v = x.view(M, K // 64, 64)
    amax = v.abs().amax(-1, keepdim=True)
    q = torch.round(v * torch.where(amax > 0, 127.0 / amax, torch.zeros(()))).clamp(-127, 127)
    s = torch.where(amax > 0, amax / 127.0, torch.ones(()))
    w = layer.packed.data[:, :K].float() - 128.0  # (N, K)
    blocks = torch.einsum("mbk,nbk->mnb", q.double(), w.view(-1, K // 64, 64).double())  # exact integers
    y = (blocks * s.view(M, 1, -1).double()).sum(-1) * layer.packed.scales[:, 0].double()
    return (y + layer.bias.double() if layer.bias is not None else y).float()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("M", "N", "K"), [(1, 48, 64), (13, 96, 384), (7, 16, 128), (5, 80, 64), (40, 64, 192)])
def test_linear_kernel_computes_the_documented_arithmetic(isa, M, N, K):
    torch.manual_seed(M + N)
    lin = nn.Linear(K, N)
    x = torch.randn(M, K) * torch.linspace(0.1, 4.0, K)  # uneven channels, as real activations
    x[0, :64] = 0.0  # an all-zero block takes the scale-1 path
    model = nn.Sequential(lin)
    quantize_(model, W8A8Config(activations="dynamic", smoothing="smoothquant"), calibration=[x], forward=lambda m, b: m(b))
    layer = model[0]
    assert layer.input_scale is not None  # the smoothing path is exercised
    got = linear_forward(layer, x, isa=isa, num_threads=2)
    want = _reference(layer, x)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))


@pytest.mark.skipif(not AMX, reason="no AMX-INT8 tiles here (CPU, compiler, or Linux did not grant the tile state)")
@pytest.mark.parametrize(("M", "N", "K"), [(1, 48, 64), (17, 16, 128), (33, 80, 384), (40, 64, 192), (99, 112, 1536)])
def test_amx_tiles_give_the_vnni_paths_bits(M, N, K):
    # token tails of 1, 17 and 33 rows (tiles read 16), an output tail of 16 (tiles pair 32), one to 24 blocks
    torch.manual_seed(M + N)
    x = torch.randn(M, K) * torch.linspace(0.1, 4.0, K)
    model = nn.Sequential(nn.Linear(K, N))
    quantize_(model, W8A8Config(activations="dynamic", smoothing="smoothquant"), calibration=[x], forward=lambda m, b: m(b))
    try:
        assert amx(False, isa="avx512") is False
        vnni = linear_forward(model[0], x, isa="avx512", num_threads=2)
        assert amx(True, isa="avx512") is True
        tiles = linear_forward(model[0], x, isa="avx512", num_threads=2)
    finally:
        amx(True, isa="avx512")
    assert torch.equal(tiles, vnni)
    torch.testing.assert_close(tiles, _reference(model[0], x), rtol=2e-5, atol=2e-5 * float(vnni.abs().max()))


class TinyBert(nn.Module):
    def __init__(self, heads: int = 4, positions: int = 32) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=heads,
                         intermediate_size=128, max_position_embeddings=positions, type_vocab_size=2)
        self.m = BertModel(cfg, add_pooling_layer=False).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state


def _batch(b: int = 3, t: int = 11) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, t // 2:] = 0  # padding must reach the attention
    return {"input_ids": torch.randint(0, 120, (b, t), generator=g), "attention_mask": mask,
            "token_type_ids": torch.randint(0, 2, (b, t), generator=g)}


def _quantized(int8_embedding: bool = True, **shape: int) -> TinyBert:
    pytest.importorskip("transformers")
    model = TinyBert(**shape)
    cal = [_batch(4, 16) for _ in range(2)]
    fwd = lambda m, b: m(**b)  # noqa: E731
    quantize_(model, W8A8Config(activations="dynamic", smoothing="smoothquant"), calibration=cal, forward=fwd)
    if int8_embedding:
        from nnforge.compress import WeightOnlyConfig

        quantize_(model, WeightOnlyConfig(modules=("embedding",), embedding_fmt="int8"))
    return model


def _token_cos(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)[mask.bool()]


@pytest.mark.parametrize("int8_embedding", [True, False], ids=["int8-emb", "fp32-emb"])
def test_encoder_matches_the_quantized_pytorch_module(int8_embedding):
    model = _quantized(int8_embedding)
    fp32 = TinyBert()
    b = _batch()
    with torch.inference_mode():
        want, ref = model(**b), fp32(**b)
    got = NativeEncoder(model.m)(**b)
    assert got.shape == want.shape
    # activation rounding differs (per token in PyTorch, per block of 64 here): close, and as close to fp32
    assert _token_cos(got, want, b["attention_mask"]).min() > 0.999
    assert _token_cos(got, ref, b["attention_mask"]).mean() >= _token_cos(want, ref, b["attention_mask"]).mean() - 1e-3
    # each sequence is computed on its own: padding the batch does not change a sequence's valid tokens
    alone = NativeEncoder(model.m)(**{k: v[:1, :5] for k, v in b.items()})
    torch.testing.assert_close(alone, got[:1, :5], rtol=1e-4, atol=1e-4)
    # 64 tokens and more: embeddings, quantisation, LayerNorm and GELU are split across threads too
    big = _batch(9, 11)
    with torch.inference_mode():
        want = model(**big)
    got = NativeEncoder(model.m, num_threads=2)(**big)
    assert _token_cos(got, want, big["attention_mask"]).min() > 0.999
    torch.testing.assert_close(got, NativeEncoder(model.m, num_threads=1)(**big), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads", [4, 2, 1], ids=["head-dim-16", "head-dim-32", "head-dim-64"])
def test_attention_over_key_blocks_query_groups_and_padding(heads):
    # 37 tokens: a full and a partial block of 32 keys, a last group of one query (queries go four at a time)
    model = _quantized(heads=heads, positions=64)
    b = _batch(3, 37)
    with torch.inference_mode():
        want = model(**b)
    got = NativeEncoder(model.m)(**b)
    assert _token_cos(got, want, b["attention_mask"]).min() > 0.999
    b["attention_mask"][1] = 0  # a sequence that is all padding: uniform attention, as in Hugging Face
    got = NativeEncoder(model.m)(**b)
    assert torch.isfinite(got).all()
    if "avx512" in ISAS:
        torch.testing.assert_close(got, NativeEncoder(model.m, isa="scalar")(**b), rtol=1e-4, atol=1e-4)


def test_portable_build_computes_what_the_avx512_one_does():
    if "avx512" not in ISAS:
        pytest.skip("this CPU has no AVX-512 VNNI")
    model = _quantized()
    b = _batch(9, 11)  # 99 tokens: the row-parallel paths too
    fast, slow = NativeEncoder(model.m, isa="avx512"), NativeEncoder(model.m, isa="scalar")
    assert fast.backend in VNNI and slow.backend == "native-scalar"
    torch.testing.assert_close(fast(**b), slow(**b), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not AMX, reason="no AMX-INT8 tiles here (CPU, compiler, or Linux did not grant the tile state)")
def test_encoder_on_amx_tiles_gives_the_vnni_paths_bits():
    model = _quantized()
    b = _batch(9, 11)
    try:
        amx(False, isa="avx512")
        vnni = NativeEncoder(model.m, isa="avx512", num_threads=2)
        assert vnni.backend == "native-avx512vnni"
        want = vnni(**b)
        amx(True, isa="avx512")
        got = NativeEncoder(model.m, isa="avx512", num_threads=2)
        assert got.backend == "native-avx512vnni+amx"
        assert torch.equal(got(**b), want)
    finally:
        amx(True, isa="avx512")


def test_backend_names_the_code_path_that_runs():
    """The encoder has AVX-512 VNNI and portable C++ only: an AVX2 build reported "native-avx2" before."""
    from nnforge.compress.quantize.kernels._build import ISA_NAMES
    from nnforge.deploy.native.encoder import _library

    model = _quantized()
    auto = NativeEncoder(model.m).backend
    assert auto in (*VNNI, "native-scalar")
    assert auto in (VNNI if "avx512" in ISAS else ("native-scalar",))
    if backend("avx2") == ISA_NAMES[1]:  # this CPU and compiler can build with AVX2 flags
        lib, name = _library("avx2")
        assert lib is not None and lib.nnf_isa() == 0 and name == "scalar"
        assert NativeEncoder(model.m, isa="avx2").backend == "native-scalar"


def test_verdict_times_both_paths_on_the_callers_inputs():
    model = _quantized()
    b = _batch()
    v = NativeEncoder(model.m).verdict(**b, repeats=3)
    assert v["shape"] == (3, 11) and v["backend"].startswith("native-")
    assert v["native_ms"] > 0 and v["module_ms"] > 0
    assert v["speedup"] == pytest.approx(v["module_ms"] / v["native_ms"])
    assert v["verdict"] == "not significant" and "faster" not in v  # three samples prove nothing


def test_without_compiled_code_the_module_runs():
    model = _quantized()
    enc = NativeEncoder(model.m, isa="torch")
    assert enc.backend == "torch"
    b = _batch()
    with torch.inference_mode():
        torch.testing.assert_close(enc(**b), model(**b))


def test_weight_only_int8_layers_run_too():
    pytest.importorskip("transformers")
    model = TinyBert()
    quantize_(model, Int8WeightOnlyConfig())
    b = _batch()
    with torch.inference_mode():
        want = model(**b)
    assert _token_cos(NativeEncoder(model.m)(**b), want, b["attention_mask"]).min() > 0.999


def test_layers_with_different_ffn_widths_run():
    """A structurally pruned FFN may be narrower in one layer: the compiled code must size its buffers for each."""
    pytest.importorskip("transformers")
    model = TinyBert()
    blk = model.m.encoder.layer[0]  # the first layer narrower than the next: buffers sized for the widest
    blk.intermediate.dense, blk.output.dense = nn.Linear(64, 64), nn.Linear(64, 64)
    quantize_(model, W8A8Config(activations="dynamic", smoothing="smoothquant"), calibration=[_batch(4, 16)],
              forward=lambda m, b: m(**b))
    b = _batch()
    with torch.inference_mode():
        want = model(**b)
    assert _token_cos(NativeEncoder(model.m)(**b), want, b["attention_mask"]).min() > 0.999


def test_a_text_classifier_runs_its_encoder_natively_in_a_copy():
    from nnforge.models.text import TextClassifier

    model = _quantized()
    clf = TextClassifier(model.m, tokenizer=None, num_classes=3)
    fast = with_native_encoder(clf)
    assert clf.encoder is model.m and type(fast.encoder).__name__ == "NativeEncoderModule"  # original untouched
    assert set(fast.state_dict()) == {"head.weight", "head.bias"}  # the wrapper saves no weights of its own
    b = _batch()
    with torch.inference_mode():
        want, got = clf(b["input_ids"], b["attention_mask"]), fast(b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.02)
    with pytest.raises(ConfigError, match="no submodule 'backbone'"):
        with_native_encoder(clf, attr="backbone")


def test_bad_models_and_inputs_are_named():
    pytest.importorskip("transformers")
    with pytest.raises(ConfigError, match="BERT-family"):
        NativeEncoder(nn.Sequential(nn.Linear(4, 4)))
    fp32 = TinyBert()
    with pytest.raises(ConfigError, match=r"encoder.layer.0.attention.self.\(query, key, value\)\[0\] is Linear"):
        NativeEncoder(fp32.m)
    model = _quantized()
    other = copy.deepcopy(model)
    other.m.encoder.layer[1].attention.self.key.input_scale.mul_(2)
    with pytest.raises(ConfigError, match="different SmoothQuant scales"):
        NativeEncoder(other.m)
    odd = _quantized()
    odd.m.encoder.layer[0].output.dense = odd.m.encoder.layer[1].attention.output.dense  # (64, 64), FFN is 128 wide
    with pytest.raises(ConfigError, match="encoder.layer.0 has layer shapes"):
        NativeEncoder(odd.m)
    enc = NativeEncoder(model.m)
    b = _batch()
    with pytest.raises(ConfigError, match="out of range"):
        enc(b["input_ids"] + 200, b["attention_mask"])
    with pytest.raises(ConfigError, match="32 positions"):
        enc(torch.zeros(1, 40, dtype=torch.long))
    with pytest.raises(ConfigError, match="attention_mask has shape"):
        enc(b["input_ids"], b["attention_mask"][:, :3])
    with pytest.raises(ConfigError, match="2-D integer"):
        enc(b["input_ids"].float())


def test_roberta_style_positions_are_refused_by_name():
    """RoBERTa numbers positions from padding_idx + 1; the compiled code reads row t for token t, so running a
    RoBERTa encoder gave silently wrong hidden states (token cosine 0.58)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.RobertaConfig(vocab_size=120, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=34, pad_token_id=1)
    roberta = transformers.RobertaModel(cfg, add_pooling_layer=False).eval()
    quantize_(roberta, Int8WeightOnlyConfig())
    with pytest.raises(ConfigError, match="RoBERTa-style.*model_type is 'roberta'"):
        NativeEncoder(roberta)
    roberta.config.model_type = "bert"  # a renamed config: the padding index of the position table still tells
    with pytest.raises(ConfigError, match="position_embeddings has padding_idx=1"):
        NativeEncoder(roberta)
    bert = _quantized()
    NativeEncoder(bert.m)  # BERT itself still runs
    bert.m.embeddings.position_embeddings.padding_idx = 0
    with pytest.raises(ConfigError, match="RoBERTa-style"):
        NativeEncoder(bert.m)


def test_empty_batches_give_empty_results():
    enc = NativeEncoder(_quantized().m)
    for shape in ((0, 5), (2, 0)):
        out = enc(torch.zeros(shape, dtype=torch.long), torch.ones(shape, dtype=torch.long))
        assert out.shape == (*shape, 64) and out.dtype == torch.float32
