"""Deployment: ONNX export of (quantized) models. Needs the ``onnx`` extra; imported on use."""

from __future__ import annotations

from typing import Any

__all__ = ["export_onnx"]


def __getattr__(name: str) -> Any:
    if name == "export_onnx":
        from nnforge.deploy.onnx import export_onnx

        return export_onnx
    raise AttributeError(name)
