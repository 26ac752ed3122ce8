"""nnforge export: every family to a verified ONNX file (fp32 and quantized), the folder written whole or not at all,
and the CLI on a real quickstart run (files, export.json, the ledger's model.exported, refusals with exit 2)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from _tiny import images, tiny_text_classifier
from nnforge.compress import WeightOnlyConfig, quantize_
from nnforge.errors import ConfigError
from nnforge.models import build

ort = pytest.importorskip("onnxruntime")

from nnforge.deploy.export import ExportConfig, ExportVerificationError, export_model, family_of  # noqa: E402

INT8 = WeightOnlyConfig(fmt="int8", group_size=None, modules=("linear", "embedding", "conv"))
INT4 = WeightOnlyConfig(fmt="int4", group_size=32, symmetric=False, calibrator="hqq")


def _cnn():
    torch.manual_seed(0)
    return build("digits-cnn", channels=(4, 8), hidden=16).eval()


def _mlp():
    torch.manual_seed(0)
    return build("digits-mlp", hidden=(32,)).eval()


def _gpt():
    torch.manual_seed(0)
    return build("char-gpt", n_layer=1, n_head=2, n_embd=32, block_size=16).eval()


def _ids(n: int = 6, seed: int = 0):
    return torch.randint(0, 84, (n, 16), generator=torch.Generator().manual_seed(seed))


TEXTS = ["now is the winter of our discontent", "to be or not to be", "a horse a horse my kingdom for a horse",
         "all the world's a stage and all the men and women merely players", "once more unto the breach"]

CASES = {  # family: (model factory, real inputs, ONNX input names)
    "image-classifier-cnn": (_cnn, images(12)[0], ["image"]),
    "image-classifier-mlp": (_mlp, images(12)[0], ["image"]),
    "char-lm": (_gpt, _ids(), ["ids"]),
    "text-classifier": (lambda: tiny_text_classifier(3).eval(), TEXTS, ["input_ids", "attention_mask"]),
}


def _feeds(model, family, inputs, names):
    if family == "text-classifier":
        b = model.tokenize(inputs)
        return {n: b[n].numpy() for n in names}, (b["input_ids"], b["attention_mask"])
    return {names[0]: inputs.numpy()}, (inputs,)


def _torch_logits(model, args):
    with torch.no_grad():
        out = model(*args)
    return (out[0] if isinstance(out, tuple) else out).numpy()


@pytest.mark.parametrize("quantize", [None, INT8, INT4], ids=["fp32", "int8", "int4"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_every_family_exports_verified_onnx(case, quantize, tmp_path, one_torch_thread):
    factory, inputs, names = CASES[case]
    model = factory()
    if quantize is not None:
        quantize_(model, quantize)
    family = family_of(model)
    assert family == case.removesuffix("-cnn").removesuffix("-mlp")
    labels = ["a", "b", "c"] if family == "text-classifier" else None
    result = export_model(model, tmp_path / "out", inputs, label_names=labels, source={"run": "r1"})
    m = result.manifest
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["export.json", "model.onnx"]
    assert [tmp_path / "out"] == list(tmp_path.iterdir())  # no temporary folder left beside it
    assert json.loads((tmp_path / "out" / "export.json").read_text()) == m
    assert (m["format"], m["family"], m["opset"]["ai.onnx"], m["quantized"]) == ("onnx", family, 17, quantize is not None)
    assert set(m["versions"]) >= {"onnx", "onnxruntime", "torch"} and m["source"] == {"run": "r1"}
    assert [i["name"] for i in m["inputs"]] == names and [o["name"] for o in m["outputs"]] == ["logits"]
    assert m["label_names"] == labels
    v = m["verification"]
    assert v["passed"] and v["inputs"] == len(inputs)
    assert v["tolerance"] == ({"rel_logit_diff": 1e-4, "argmax_agreement": 1.0} if quantize is None
                              else {"rel_logit_diff": 0.2, "argmax_agreement": 0.95})
    assert v["rel_logit_diff"] <= v["tolerance"]["rel_logit_diff"]
    assert v["argmax_agreement"] >= v["tolerance"]["argmax_agreement"]
    model_file = tmp_path / "out" / "model.onnx"
    assert m["files"]["model.onnx"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert result.files["export.json"] == hashlib.sha256((tmp_path / "out" / "export.json").read_bytes()).hexdigest()
    if quantize is INT8:  # int8 per row: the kernel's arithmetic in standard operators, no contrib operator
        assert not any(op.startswith("com.microsoft") for op in m["operators"]) and "MatMulInteger" not in m["operators"]
        assert "Round" in m["operators"]
    if quantize is INT4 and family != "image-classifier":  # the digits' convs are not int4 (Linear and Embedding)
        assert "com.microsoft.MatMulNBits" in m["operators"]
    # the file runs other inputs than those it was verified on (batch and sequence length are dynamic)
    other = {"text-classifier": TEXTS[::-1] + ["exeunt"], "char-lm": _ids(3, seed=1)[:, :9]}.get(family, images(5, 1)[0])
    feeds, args = _feeds(model, family, other, names)
    got = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ref = _torch_logits(model, args)
    assert got.shape == ref.shape
    if quantize is None:
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_int8_rowwise_is_pytorchs_arithmetic(tmp_path, one_torch_thread):
    """One int8 layer: ONNX Runtime's rowwise graph gives PyTorch's kernel output to float rounding (2e-6 of the
    largest output), which the fp32-activation MatMulNBits graph does not."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 64))
    quantize_(model, WeightOnlyConfig(fmt="int8", group_size=None))
    x = torch.randn(32, 256)
    ref = model(x).detach().numpy()
    out = {}
    for route in ("rowwise", "nbits"):
        r = export_model(model, tmp_path / route, x, ExportConfig(int8_matmul=route), family="tensor-classifier")
        sess = ort.InferenceSession(str(r.folder / "model.onnx"), providers=["CPUExecutionProvider"])
        out[route] = sess.run(None, {"input": x.numpy()})[0]
    scale = np.abs(ref).max()
    assert np.abs(out["rowwise"] - ref).max() <= 2e-6 * scale
    assert np.abs(out["nbits"] - ref).max() > 1e-4 * scale  # different activation rounding


def test_out_of_tolerance_raises_and_writes_nothing(tmp_path, one_torch_thread):
    model = _mlp()
    quantize_(model, INT4)
    with pytest.raises(ExportVerificationError, match="beyond the tolerance") as info:
        export_model(model, tmp_path / "out", images(8)[0], ExportConfig(rtol=1e-9))
    assert info.value.exit_code == 1 and not info.value.verification["passed"]
    assert info.value.verification["rel_logit_diff"] > 1e-9
    assert list(tmp_path.iterdir()) == []


def test_output_folder_rules(tmp_path, one_torch_thread):
    model, x = _cnn(), images(4)[0]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export_model(model, tmp_path / "file", x)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files"):
        export_model(model, tmp_path / "other", x)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    first = export_model(model, tmp_path / "out", x)
    second = export_model(_mlp(), tmp_path / "out", x)  # an earlier export is replaced, whole
    assert first.manifest["family"] == second.manifest["family"] == "image-classifier"
    assert json.loads((tmp_path / "out" / "export.json").read_text())["files"] == second.manifest["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "other", "out"]
    with pytest.raises(ConfigError, match="format 'web'.*char-lm"):
        export_model(_gpt(), tmp_path / "web", _ids(), ExportConfig(format="web"))
    with pytest.raises(ConfigError, match="non-empty list"):
        export_model(tiny_text_classifier(), tmp_path / "t", [])
    with pytest.raises(ConfigError, match="format"):
        ExportConfig(format="tflite")
    assert not (tmp_path / "web").exists() and not (tmp_path / "t").exists()


@pytest.mark.slow
def test_minilm_fp32_exports_exactly(minilm, tmp_path):
    result = export_model(minilm, tmp_path / "out", TEXTS, label_names=["comedy", "tragedy", "history"])
    v = result.verification
    assert v["passed"] and v["argmax_agreement"] == 1.0 and v["rel_logit_diff"] < 1e-5
    assert "com.microsoft.MultiHeadAttention" in result.manifest["operators"]  # fused attention
    assert result.manifest["max_length"] == minilm.max_length


# --- the CLI ------------------------------------------------------------------------------------------------

def _events(work, kind):
    from nnforge.ledger import Ledger

    with Ledger.open(work / ".nnforge" / "ledger.db") as led:
        return [e for e in led.events() if e.kind == kind]


def test_cli_exports_a_run_and_records_it(exported_web):
    work, run, out, rc = exported_web
    assert rc == 0
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["source"]["run"] == run.name and manifest["source"]["variant"] == "int8"
    assert manifest["family"] == "text-classifier" and manifest["format"] == "web"
    assert manifest["label_names"] == json.loads((run / "config.json").read_text())["label_names"]
    v = manifest["verification"]
    assert v["passed"] and v["inputs"] == 24 and v["argmax_agreement"] >= 0.95
    (event,) = _events(work, "model.exported")
    d = event.data
    assert event.run == run.name and d["variant"] == "int8" and d["format"] == "web"
    assert d["weights_sha256"] == hashlib.sha256((run / "model-int8.safetensors").read_bytes()).hexdigest()
    for name, digest in d["files"].items():  # every file written, export.json included, by sha256
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert {"model.onnx", "export.json", "index.html", "ort-wasm-simd-threaded.wasm"} <= set(d["files"])
    assert d["verification"]["max_abs_logit_diff"] == v["max_abs_logit_diff"]
    assert d["inputs"]["split"] == "test" and d["inputs"]["texts"] == 24
    assert d["opset"]["ai.onnx"] == 17 and d["versions"]["onnxruntime-web"] == manifest["versions"]["onnxruntime-web"]


@pytest.mark.parametrize("argv, message", [
    (["--variant", "int4"], "has the variants"),
    (["--variant", "int8-native"], "export its saved variant 'int8'"),
    (["--format", "tflite"], "must be one of onnx, web"),
    (["--verify", "0"], "at least 1"),
    (["--out", "a-file.txt"], "is a file"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(small_run_copy, capsys, argv, message):
    from nnforge.cli import main

    work, run = small_run_copy
    (work / "a-file.txt").write_text("keep")
    before = len(_events(work, "model.exported"))
    assert main(["export", run.name, *argv]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not (run / "export").exists() and (work / "a-file.txt").read_text() == "keep"
    assert len(_events(work, "model.exported")) == before
