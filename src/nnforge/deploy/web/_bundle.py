"""The static folder of a web export: the page, its scripts, onnxruntime-web's WebAssembly runtime, the vocabulary.

Written by :func:`nnforge.deploy.export.export_model` with ``format="web"`` beside ``model.onnx`` and
``export.json``; any static file server serves it (the page fetches its files, so ``file://`` does not work).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from nnforge.errors import ConfigError, MissingDependencyError, ModelError

__all__ = ["ORT_WEB_FILES", "PAGE_FILES", "WebBundle", "find_ort_web", "prepare", "wordpiece_settings"]

# onnxruntime-web's WebAssembly-only build (no WebGPU / WebGL): the ES module and the SIMD runtime it loads
ORT_WEB_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = ("index.html", "nnforge.mjs", "wordpiece.mjs")
VOCAB_FILE = "wordpiece.json"
_FIX = ("run `npm ci --no-audit --no-fund` at the nnforge repository root (`make setup` does), or `npm install "
        "onnxruntime-web` in a folder of yours and pass its node_modules/onnxruntime-web/dist as ort_web_dir "
        "(or set NNFORGE_ORT_WEB to it)")


def _candidates() -> list[Path]:
    """Where onnxruntime-web is looked for: node_modules of the working folder and its parents, then of the
    folders above this package (a source checkout: the repository root)."""
    out: list[Path] = []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            cand = folder / "node_modules" / "onnxruntime-web" / "dist"
            if cand not in out:
                out.append(cand)
    return out


def find_ort_web(ort_web_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """onnxruntime-web's ``dist`` folder and its version.

    Raises:
        MissingDependencyError: no folder holding :data:`ORT_WEB_FILES` (the message names the fix).
    """
    given = ort_web_dir or os.environ.get("NNFORGE_ORT_WEB")
    places = [Path(given)] if given else _candidates()
    for dist in places:
        if all((dist / f).is_file() for f in ORT_WEB_FILES):
            version = "unknown"
            try:
                version = str(json.loads((dist.parent / "package.json").read_text(encoding="utf-8"))["version"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            return dist, version
    where = str(places[0]) if given else f"node_modules/onnxruntime-web/dist in {Path.cwd()} and its parents"
    missing = [f for f in ORT_WEB_FILES if not (places[0] / f).is_file()] if given else list(ORT_WEB_FILES)
    raise MissingDependencyError(f"the web export needs onnxruntime-web ({', '.join(missing)}), not found in "
                                 f"{where}: {_FIX}")


def wordpiece_settings(tokenizer: Any) -> dict[str, Any]:
    """What the page's WordPiece tokenizer needs, read from a Hugging Face BERT tokenizer: normalizer options,
    special tokens and the vocabulary (by id).

    Raises:
        ModelError: the tokenizer is not a fast BERT WordPiece tokenizer (what the page implements).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError(f"the web export tokenizes in the browser with BERT WordPiece; {type(tokenizer).__name__} is "
                         "not a Hugging Face fast tokenizer")
    spec = json.loads(backend.to_str())
    norm, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    if norm.get("type") != "BertNormalizer" or pre.get("type") != "BertPreTokenizer" or model.get("type") != "WordPiece":
        raise ModelError("the web export tokenizes in the browser with BERT WordPiece (BertNormalizer, "
                         "BertPreTokenizer, WordPiece); this tokenizer has "
                         f"{norm.get('type')}, {pre.get('type')}, {model.get('type')}")
    vocab: dict[str, int] = model["vocab"]
    by_id = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in by_id] != list(range(len(by_id))):
        raise ModelError("the tokenizer's vocabulary ids are not 0..n-1; the web export cannot write it")
    special = {name: getattr(tokenizer, f"{name}_token") for name in ("cls", "sep", "pad", "unk")}
    if any(t not in vocab for t in special.values()):
        raise ModelError(f"the tokenizer's special tokens {special} are not all in its vocabulary")
    lowercase = bool(norm.get("lowercase", True))
    strip = norm.get("strip_accents")
    return {"clean_text": bool(norm.get("clean_text", True)),
            "handle_chinese_chars": bool(norm.get("handle_chinese_chars", True)),
            "strip_accents": lowercase if strip is None else bool(strip), "lowercase": lowercase,
            "unk_token": model.get("unk_token", special["unk"]),
            "continuing_subword_prefix": model.get("continuing_subword_prefix", "##"),
            "max_input_chars_per_word": int(model.get("max_input_chars_per_word", 100)),
            **{f"{name}_token": tok for name, tok in special.items()}, "vocab": by_id}


@dataclass
class WebBundle:
    """What :func:`prepare` found; :meth:`write` puts the page beside the model."""

    family: str
    dist: Path
    version: str
    tokenizer: dict[str, Any] | None = field(default=None, repr=False)

    def write(self, folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """Copy the page, its scripts and the runtime into ``folder``; the manifest's ``web`` entry."""
        for name in ORT_WEB_FILES:
            shutil.copyfile(self.dist / name, folder / name)
        static = resources.files("nnforge.deploy.web") / "static"
        for name in PAGE_FILES:
            (folder / name).write_bytes((static / name).read_bytes())
        if self.tokenizer is not None:
            settings = {**self.tokenizer, "max_length": manifest.get("max_length") or 512}
            (folder / VOCAB_FILE).write_text(json.dumps(settings, ensure_ascii=False) + "\n", encoding="utf-8")
        return {"page": "index.html", "predict": "window.nnforgePredict(inputs) -> Promise<[{label, confidence, "
                                                 "probabilities}]>", "runtime": f"onnxruntime-web {self.version} (wasm)",
                "tokenizer": VOCAB_FILE if self.tokenizer is not None else None}


def prepare(model: nn.Module, family: str, ort_web_dir: str | os.PathLike[str] | None = None) -> WebBundle:
    """Check that ``model`` can be exported for the web and find what the page needs, before any tracing.

    Raises:
        ConfigError: a family the page cannot run (char-lm: generation is not a classification).
        ModelError: a text classifier whose tokenizer is not BERT WordPiece.
        MissingDependencyError: onnxruntime-web not found.
    """
    if family == "char-lm":
        raise ConfigError("format 'web' writes a page that classifies texts or tensors; a char-lm (next-character "
                          "logits) exports with format 'onnx'")
    tokenizer = wordpiece_settings(getattr(model, "tokenizer", None)) if family == "text-classifier" else None
    dist, version = find_ort_web(ort_web_dir)
    return WebBundle(family, dist, version, tokenizer)
