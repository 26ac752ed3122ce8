"""The web export: the JavaScript WordPiece tokenizer gives the Python tokenizer's ids, the folder holds what the
page needs, a missing onnxruntime-web names the fix, and in headless Chromium the page's predictions are
PyTorch's (``browser_predict``; marked slow). Node.js runs the tokenizer test; Chromium + chromedriver the browser
tests: they skip where absent, except under CI=true where that is a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import torch

from _tiny import images, tiny_text_classifier
from nnforge.errors import MissingDependencyError, ModelError
from nnforge.models import build

pytest.importorskip("onnxruntime")

from nnforge.deploy.export import ExportConfig, export_model  # noqa: E402
from nnforge.deploy.web import CHROMEDRIVER, CHROMIUM, browser_predict, serve_folder, wordpiece_settings  # noqa: E402

STATIC = Path(__file__).resolve().parents[2] / "src" / "nnforge" / "deploy" / "web" / "static"
# Unicode the Shakespeare passages lack: accents, CJK, a final sigma, dotted I, soft hyphen, zero-width space, tab,
# NUL, curly quotes and dashes, a 150-letter word ([UNK]) and a text past max_length (truncated)
HARD = ["Café naïve résumé — “quoted” ‘x’ … 你好世界 ΑΣ İstanbul \u00ad soft\u200bzero\ttab\u0000nul",
        "a" * 150 + " supercalifragilisticexpialidocious", "word " * 300, "", "   "]
NODE = """
import { readFileSync } from "node:fs";
const [moduleUrl, settings, texts] = process.argv.slice(2);
const { WordPiece } = await import(moduleUrl);
const wp = new WordPiece(JSON.parse(readFileSync(settings, "utf8")));
process.stdout.write(JSON.stringify(JSON.parse(readFileSync(texts, "utf8")).map((t) => wp.encode(t))));
"""


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {what}")
    pytest.skip(what)


@pytest.fixture(scope="module")
def passages(shakespeare_texts):
    """200 four-line passages of the held-out test plays."""
    from nnforge import data

    texts = list(data.load("shakespeare-genre", path=shakespeare_texts, passages_per_play=40).split("test").texts)
    assert len(texts) >= 200
    return texts[:200]


def test_js_wordpiece_gives_the_hf_tokenizers_ids(passages, tmp_path):
    if shutil.which("node") is None:
        _missing("node (Node.js) is not installed: apt-get install nodejs")
    from transformers import AutoTokenizer

    from nnforge.models.text import minilm_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    texts = passages + HARD
    (tmp_path / "wordpiece.json").write_text(json.dumps({**wordpiece_settings(tok), "max_length": 128}))
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    (tmp_path / "run.mjs").write_text(NODE)
    done = subprocess.run(["node", str(tmp_path / "run.mjs"), (STATIC / "wordpiece.mjs").as_uri(),
                           str(tmp_path / "wordpiece.json"), str(tmp_path / "texts.json")],
                          capture_output=True, text=True, timeout=120, check=True)
    js = json.loads(done.stdout)
    hf = [tok(t, truncation=True, max_length=128)["input_ids"] for t in texts]
    assert [i for i, (a, b) in enumerate(zip(js, hf, strict=True)) if a != b] == []
    assert len(hf[-3]) == 128 and tok.unk_token_id in hf[-4]  # truncation and [UNK] were exercised


def test_wordpiece_settings_refuse_other_tokenizers():
    with pytest.raises(ModelError, match="BERT WordPiece"):
        wordpiece_settings(tiny_text_classifier().tokenizer)


def test_missing_onnxruntime_web_names_the_fix(tmp_path):
    model = build("digits-mlp", hidden=(16,))
    with pytest.raises(MissingDependencyError, match="npm ci") as info:
        export_model(model, tmp_path / "web", images(4)[0], ExportConfig(format="web", ort_web_dir=str(tmp_path)))
    assert "ort.wasm.min.mjs" in str(info.value) and info.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_web_folder_is_served_with_the_types_browsers_need(exported_web):
    _, _, out, rc = exported_web
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "nnforge.mjs", "wordpiece.mjs", "wordpiece.json", "model.onnx", "export.json",
            "ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"} == names
    settings = json.loads((out / "wordpiece.json").read_text())
    assert len(settings["vocab"]) == 30522 and settings["max_length"] == 128 and settings["lowercase"]
    with serve_folder(out) as url:
        for name, kind in [("index.html", "text/html"), ("nnforge.mjs", "text/javascript"),
                           ("ort-wasm-simd-threaded.wasm", "application/wasm"), ("export.json", "application/json")]:
            with urllib.request.urlopen(url + name, timeout=10) as r:  # noqa: S310 - our own loopback server
                assert r.headers["Content-Type"].startswith(kind) and r.read()


# --- in Chromium --------------------------------------------------------------------------------------------

def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("python package selenium")
    if missing:
        _missing(f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; "
                 "pip install 'nnforge[dev]')")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_browser_predictions_are_pytorchs_on_200_passages(exported_web, passages):
    """The int8 page in Chromium (tokenizer, onnxruntime-web, softmax all in JavaScript) against ``Run.predict`` of
    the same int8 variant. int8 activations are rounded per row, so float differences of an ulp can move a near tie
    (docs/export.md): every passage PyTorch decides by a margin of 0.05 or more must get PyTorch's label."""
    _need_browser()
    from nnforge.recipes.runs import load_run

    work, run_dir, out, rc = exported_web
    assert rc == 0
    browser = browser_predict(out, passages)
    run = load_run(run_dir, ledger=work / ".nnforge" / "ledger.db")
    torch_rows = run.predict(passages, "int8", record=False)
    assert len(browser) == len(torch_rows) == 200
    differ = []
    for i, (b, t) in enumerate(zip(browser, torch_rows, strict=True)):
        assert set(b["probabilities"]) == set(t["probabilities"]) and abs(sum(b["probabilities"].values()) - 1) < 1e-6
        if b["label"] != t["label"]:
            top = sorted(t["probabilities"].values())
            differ.append((i, round(top[-1] - top[-2], 4)))
    assert all(margin < 0.05 for _, margin in differ), differ
    assert len(differ) <= 2, differ
    close = max(abs(b["confidence"] - t["confidence"]) for b, t in zip(browser, torch_rows, strict=True))
    assert close < 0.05


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_browser_runs_a_tensor_classifier(tmp_path):
    """A digits MLP page: flat pixel arrays in, PyTorch's labels out (fp32: the same numbers)."""
    _need_browser()
    torch.manual_seed(0)
    model = build("digits-mlp", hidden=(32,)).eval()
    x = images(16)[0]
    try:
        export_model(model, tmp_path / "web", x, ExportConfig(format="web"), label_names=[str(i) for i in range(10)])
    except MissingDependencyError as exc:
        _missing(str(exc))
    rows = browser_predict(tmp_path / "web", x.reshape(16, -1).tolist())
    with torch.no_grad():
        probs = torch.softmax(model(x), -1)
    assert [r["label"] for r in rows] == [str(int(i)) for i in probs.argmax(-1)]
    assert max(abs(r["confidence"] - float(p.max())) for r, p in zip(rows, probs, strict=True)) < 1e-5
