"""Deployment: ONNX export of (quantized) models, verified exports (ONNX, web page) and native runtimes. Needs the
``onnx`` extra; imported on use."""

from __future__ import annotations

from typing import Any

__all__ = ["ExportConfig", "ExportResult", "ExportVerificationError", "export_model", "export_onnx"]


def __getattr__(name: str) -> Any:
    if name == "export_onnx":
        from nnforge.deploy.onnx import export_onnx

        return export_onnx
    if name in ("ExportConfig", "ExportResult", "ExportVerificationError", "export_model"):
        from nnforge.deploy import export

        return getattr(export, name)
    raise AttributeError(name)
