"""Web export: a static page that tokenizes, runs the ONNX model with onnxruntime-web (WebAssembly) and
classifies in the browser, and :func:`browser_predict` to run that page in headless Chromium.

``export_model(model, out, texts, ExportConfig(format="web"))`` (:mod:`nnforge.deploy.export`) writes the folder:
``index.html`` (a text box), ``nnforge.mjs`` (``window.nnforgePredict(inputs)``), ``wordpiece.mjs`` and
``wordpiece.json`` (BERT WordPiece and the vocabulary, giving the ids the Python tokenizer gives),
onnxruntime-web's ``ort.wasm.min.mjs`` and its WebAssembly runtime, ``model.onnx`` and ``export.json``.
onnxruntime-web comes from npm (the repository's ``package.json``: ``npm ci``).
"""

from __future__ import annotations

from nnforge.deploy.web._browser import CHROMEDRIVER, CHROMIUM, browser_predict, serve_folder
from nnforge.deploy.web._bundle import (
    ORT_WEB_FILES,
    PAGE_FILES,
    WebBundle,
    find_ort_web,
    prepare,
    wordpiece_settings,
)

__all__ = ["CHROMEDRIVER", "CHROMIUM", "ORT_WEB_FILES", "PAGE_FILES", "WebBundle", "browser_predict", "find_ort_web",
           "prepare", "serve_folder", "wordpiece_settings"]
