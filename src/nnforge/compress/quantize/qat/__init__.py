"""Quantization-aware training: fake quantization with a straight-through estimator, as a training callback."""

from __future__ import annotations

from nnforge.compress.quantize.qat.callback import QATCallback, convert_qat_, prepare_qat_, qat_callback
from nnforge.compress.quantize.qat.config import QATConfig
from nnforge.compress.quantize.qat.fake import FakeQuantWeight, fake_quantize, fake_quantize_activations

__all__ = ["QATConfig", "QATCallback", "qat_callback", "prepare_qat_", "convert_qat_", "fake_quantize",
           "fake_quantize_activations", "FakeQuantWeight"]
