"""Export a model as a verified ONNX file, or as a static web page that runs it in the browser.

>>> from nnforge.deploy.export import ExportConfig, export_model
>>> result = export_model(model, "exported/", texts, ExportConfig(format="onnx"),
...                       label_names=["comedy", "tragedy", "history"])  # doctest: +SKIP
>>> result.manifest["verification"]["argmax_agreement"]  # doctest: +SKIP
1.0

The folder holds ``model.onnx`` and ``export.json``: the format, opset, operators, onnx / onnxruntime versions,
input and output names, label names, and the **verification**: the exported graph run by ONNX Runtime on the real
inputs given, against PyTorch (largest absolute logit difference, relative to the largest logit, and argmax
agreement), with the tolerance it was checked against. An export outside the tolerance raises
:class:`ExportVerificationError` and leaves nothing behind. ``format="web"`` adds the page (:mod:`nnforge.deploy.web`).

Families (:func:`~nnforge.models.family_of`):

- ``text-classifier`` (:class:`~nnforge.models.text.TextClassifier`): ``input_ids``, ``attention_mask`` (int64,
  batch × tokens) → ``logits`` (batch × classes); ``inputs`` are texts, tokenized by the model's own tokenizer;
- ``char-lm`` (char-GPT): ``ids`` (int64, batch × tokens) → ``logits`` (batch × tokens × vocabulary);
- ``image-classifier`` (digits CNN and MLP): ``image`` (float32, batch × 1 × 8 × 8) → ``logits``;
- ``tensor-classifier`` (any other module): ``input`` (float32, batch × …) → ``logits``.

Quantized layers are written as :func:`~nnforge.deploy.onnx.export_onnx` does; the default ``int8_matmul="rowwise"``
writes per-row int8 layers (the ``int8`` scheme) with PyTorch's own arithmetic in standard operators, which
onnxruntime-web's WebAssembly backend runs (it runs ``MatMulNBits`` too, but with fp32 activations, ignoring
``accuracy_level``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError, MissingDependencyError, NnforgeError
from nnforge.models.family import FAMILIES, family_of
from nnforge.models.text import eval_mode

__all__ = ["ExportConfig", "ExportResult", "ExportVerificationError", "FAMILIES", "MANIFEST", "check_export_folder",
           "export_model", "family_of"]

log = logging.getLogger(__name__)

MANIFEST = "export.json"
MODEL_FILE = "model.onnx"
_BATCH = 32  # verification batch


@config_type("deploy.export")
class ExportConfig(Config):
    """How :func:`export_model` writes and checks an export.

    ``rtol`` bounds the largest absolute logit difference between ONNX Runtime and PyTorch, relative to the
    largest absolute PyTorch logit; ``min_agreement`` the fraction of argmax (predicted class or next token) that
    agree. Unset, they are 1e-4 and 1.0 for a model without quantized layers, and 0.2 and 0.95 for a quantized
    one. Its int8 activations are rounded per row, so a difference of one float ulp upstream can move a value
    across a rounding boundary, a full quantization step that later layers amplify: PyTorch's own int8 MiniLM
    moves by a median 1.6% and at most 5.8% of its largest logit when one LayerNorm weight is scaled by 1 + 1e-7
    (its fp32 model by 4e-7), and ONNX Runtime's float order differs by as much (quickstart int8 on 200 passages:
    median 1.4%, largest 5.7%, 199 labels of 200 the same, the other a near tie).
    """

    format: Literal["onnx", "web"] = Field("onnx", description="onnx: model.onnx + export.json; web: a static page")
    opset: int = Field(17, ge=17, le=21, description="ONNX opset of the default domain")
    int8_matmul: Literal["rowwise", "nbits", "integer"] = Field(
        "rowwise", description="how int8 layers are written (see nnforge.deploy.onnx.export_onnx)")
    fuse_attention: bool = Field(True, description="BERT-family attention as com.microsoft.MultiHeadAttention")
    rtol: float | None = Field(None, gt=0, le=1, description="largest |ORT - PyTorch| logit / largest |logit|")
    min_agreement: float | None = Field(None, ge=0, le=1, description="least fraction of equal argmax")
    ort_web_dir: str | None = Field(None, description="web: onnxruntime-web's dist folder (default: found from "
                                                      "node_modules, or $NNFORGE_ORT_WEB)")


class ExportVerificationError(NnforgeError):
    """The exported graph's outputs differ from PyTorch's beyond the tolerance (exit code 1); ``verification``
    holds the numbers."""

    exit_code = 1

    def __init__(self, message: str, verification: dict[str, Any]) -> None:
        super().__init__(message)
        self.verification = verification


@dataclass(frozen=True)
class ExportResult:
    """A finished export: its folder, its files (relative name → sha256, export.json included) and the manifest."""

    folder: Path
    files: dict[str, str]
    manifest: dict[str, Any]

    @property
    def verification(self) -> dict[str, Any]:
        return dict(self.manifest["verification"])


# --- families ---------------------------------------------------------------------------------------------

class _TextLogits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)  # type: ignore[no-any-return]


class _FirstOutput(nn.Module):
    """A module whose forward returns a tuple (char-GPT: logits, loss) reduced to its first output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out


@dataclass
class _Plan:
    """What one family exports: the traced module, its input batches, the I/O names and dynamic axes."""

    module: nn.Module
    batches: list[tuple[torch.Tensor, ...]]
    input_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]


def _plan(model: nn.Module, family: str, inputs: Any) -> _Plan:
    if family == "text-classifier":
        if isinstance(inputs, str) or not isinstance(inputs, Sequence) or not inputs \
                or not all(isinstance(t, str) and t.strip() for t in inputs):
            raise ConfigError("a text classifier is exported with real texts to verify it on: give a non-empty list "
                              "of non-empty strings")
        tok: Any = model
        batches: list[tuple[torch.Tensor, ...]] = []
        for i in range(0, len(inputs), _BATCH):
            b = tok.tokenize(list(inputs[i : i + _BATCH]))
            batches.append((b["input_ids"].cpu(), b["attention_mask"].cpu()))
        axes = {"batch": 0, "tokens": 1}
        return _Plan(_TextLogits(model), batches, ["input_ids", "attention_mask"],
                     {"input_ids": {v: k for k, v in axes.items()}, "attention_mask": {v: k for k, v in axes.items()},
                      "logits": {0: "batch"}})
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or len(inputs) == 0:
        raise ConfigError(f"a {family} is exported with a non-empty tensor of real inputs (batch first) to verify it "
                          f"on; got {type(inputs).__name__}")
    if family == "char-lm":
        if inputs.is_floating_point() or inputs.dim() != 2:
            raise ConfigError(f"a char-lm is exported with token ids (batch × tokens, integer); got {inputs.dtype} of "
                              f"shape {tuple(inputs.shape)}")
        batches = [(inputs[i : i + _BATCH].long(),) for i in range(0, len(inputs), _BATCH)]
        return _Plan(_FirstOutput(model), batches, ["ids"],
                     {"ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch", 1: "tokens"}})
    name = "image" if family == "image-classifier" else "input"
    x = inputs.float() if not inputs.is_floating_point() else inputs
    batches = [(x[i : i + _BATCH],) for i in range(0, len(x), _BATCH)]
    return _Plan(_FirstOutput(model), batches, [name], {name: {0: "batch"}, "logits": {0: "batch"}})


def _is_quantized(model: nn.Module) -> bool:
    from nnforge.compress import QuantizedConv2d, QuantizedEmbedding, QuantizedLinear

    return any(isinstance(m, QuantizedLinear | QuantizedEmbedding | QuantizedConv2d) for m in model.modules())


# --- verification -----------------------------------------------------------------------------------------

def _verify(session: Any, plan: _Plan, rtol: float, min_agreement: float) -> dict[str, Any]:
    """ONNX Runtime against PyTorch on every batch: the numbers export.json records, and whether they pass."""
    diff, scale, agree, total, rows = 0.0, 0.0, 0, 0, 0
    disagreements: list[dict[str, Any]] = []
    row_diffs: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in plan.batches:
            ref = plan.module(*batch).float().numpy()
            got = session.run(["logits"], {n: t.numpy() for n, t in zip(plan.input_names, batch, strict=True)})[0]
            if got.shape != ref.shape:
                raise NnforgeError(f"the exported graph returns logits of shape {got.shape}; PyTorch {ref.shape}")
            row_diffs.append(np.abs(got - ref).reshape(len(ref), -1).max(-1))
            diff = max(diff, float(row_diffs[-1].max()))
            scale = max(scale, float(np.abs(ref).max()))
            same = got.argmax(-1) == ref.argmax(-1)
            agree, total = agree + int(same.sum()), total + same.size
            top2 = np.sort(ref, axis=-1)[..., -2:] if ref.shape[-1] > 1 else np.repeat(ref, 2, -1)
            for idx in zip(*np.nonzero(~same), strict=True):  # (row,) or (row, position) of a char-lm
                disagreements.append({"index": [rows + int(idx[0]), *(int(i) for i in idx[1:])],
                                      "torch_margin": float(top2[idx][1] - top2[idx][0])})
            rows += len(ref)
    rel = diff / scale if scale > 0 else diff
    median = float(np.median(np.concatenate(row_diffs))) / (scale if scale > 0 else 1.0)
    agreement = agree / total if total else 1.0
    return {"inputs": rows, "compared": total, "max_abs_logit_diff": diff,
            "max_abs_logit": scale, "rel_logit_diff": rel, "median_rel_row_diff": median,
            "argmax_agreement": agreement,
            "disagreements": disagreements[:20], "tolerance": {"rel_logit_diff": rtol, "argmax_agreement": min_agreement},
            "passed": bool(rel <= rtol and agreement >= min_agreement), "runtime": "onnxruntime (CPU)"}


# --- writing ----------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_export_folder(out: Path) -> None:
    """The export goes to a new folder or replaces an earlier export, never into a folder of other files.

    Raises:
        ConfigError: ``out`` is a file, or a folder holding files but no export.json.
    """
    if out.is_file() or out.is_symlink():
        raise ConfigError(f"{out}: is a file; give a folder to export into")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ConfigError(f"{out}: a folder that holds other files (no {MANIFEST}: not an earlier export); give an "
                          "empty or new folder")


def _graph_facts(path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node})

    def io(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
        return out

    return {"opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import}, "operators": ops,
            "inputs": io(model.graph.input), "outputs": io(model.graph.output)}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


def export_model(model: nn.Module, out: str | os.PathLike[str], inputs: Any, config: ExportConfig | None = None, *,
                 label_names: Sequence[str] | None = None, family: str | None = None,
                 source: dict[str, Any] | None = None) -> ExportResult:
    """Export ``model`` into the folder ``out`` and verify it against PyTorch on ``inputs``.

    Args:
        inputs: real inputs to trace and verify with: texts for a text classifier, a (batch, …) tensor otherwise
            (token ids for a char-lm). Every one is compared.
        label_names: class names, recorded in export.json (the web page labels its predictions with them).
        family: one of :data:`FAMILIES` (default: :func:`family_of`).
        source: what was exported (run id, variant, weights sha256), recorded as given.

    Returns:
        The folder, its files with their sha256 and the manifest (export.json).

    Raises:
        ConfigError: bad inputs, an output path that is a file or a folder of other files, a family that the
            format cannot write (web: text and tensor classifiers).
        ExportVerificationError: ONNX Runtime's outputs differ from PyTorch's beyond the tolerance (nothing written).
        MissingDependencyError: onnx / onnxruntime (the ``onnx`` extra) or, for the web, onnxruntime-web missing.
    """
    config = config or ExportConfig()
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("export needs onnx and onnxruntime: pip install 'nnforge[onnx]'") from exc

    family = family or family_of(model)
    if family not in FAMILIES:
        raise ConfigError(f"The 'family' parameter of export_model must be one of {list(FAMILIES)}. Got {family!r}.")
    out = Path(out)
    check_export_folder(out)
    web = None
    if config.format == "web":
        from nnforge.deploy import web as web_mod

        web = web_mod.prepare(model, family, config.ort_web_dir)  # refuses early: before minutes of tracing
    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        raise ConfigError("export_model exports and verifies on the CPU: move the model there first (model.cpu())")
    with eval_mode(model):
        return _export(model, out, inputs, config, label_names, family, source, web)


def _export(model: nn.Module, out: Path, inputs: Any, config: ExportConfig, label_names: Sequence[str] | None,
            family: str, source: dict[str, Any] | None, web: Any) -> ExportResult:
    import onnxruntime as ort

    from nnforge.deploy.onnx import export_onnx

    plan = _plan(model, family, inputs)
    quantized = _is_quantized(model)
    rtol = config.rtol if config.rtol is not None else (0.2 if quantized else 1e-4)
    min_agreement = config.min_agreement if config.min_agreement is not None else (0.95 if quantized else 1.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        onnx_path = export_onnx(plan.module, tmp / MODEL_FILE, plan.batches[0], input_names=plan.input_names,
                                output_names=["logits"], dynamic_axes=plan.dynamic_axes, opset=config.opset,
                                int8_matmul=config.int8_matmul, fuse_attention=config.fuse_attention)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        verification = _verify(session, plan, rtol, min_agreement)
        del session
        if not verification["passed"]:
            raise ExportVerificationError(
                f"the exported {family} differs from PyTorch beyond the tolerance on {verification['inputs']} real "
                f"inputs: largest logit difference {verification['rel_logit_diff']:.3g} of the largest logit "
                f"(allowed {rtol:g}), argmax agreement {verification['argmax_agreement']:.4f} (at least "
                f"{min_agreement:g} needed). Nothing was written; rtol / min_agreement set the tolerance.",
                verification)
        manifest: dict[str, Any] = {
            "nnforge_export": 1, "format": config.format, "family": family, "model": MODEL_FILE,
            **_graph_facts(onnx_path), "versions": _versions(),
            "label_names": list(label_names) if label_names is not None else None,
            "quantized": quantized, "config": config.to_dict()["data"], "verification": verification,
            "source": dict(source or {}),
        }
        if family == "text-classifier":
            manifest["max_length"] = int(getattr(model, "max_length", 0)) or None
        if web is not None:
            manifest["web"] = web.write(tmp, manifest)
            manifest["versions"]["onnxruntime-web"] = web.version
        files = {p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest["files"] = {name: {"sha256": h, "bytes": (tmp / name).stat().st_size} for name, h in files.items()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        files[MANIFEST] = _sha256(tmp / MANIFEST)
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (%s) to %s: logit difference %.3g of the largest, argmax agreement %.4f", family,
             config.format, out, verification["rel_logit_diff"], verification["argmax_agreement"])
    return ExportResult(out, files, manifest)


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an earlier export there is replaced only once the new one is whole."""
    from nnforge.errors import follow_umask

    for p in tmp.rglob("*"):  # mkstemp and mkdtemp made them 0600 and 0700
        if p.is_file():
            follow_umask(p)
    file_mode = (tmp / MANIFEST).stat().st_mode & 0o666
    for d in [*(p for p in tmp.rglob("*") if p.is_dir()), tmp]:
        os.chmod(d, file_mode | (file_mode & 0o444) >> 2)  # the read bits' search bits
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / "export")
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(old / "export", out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)

