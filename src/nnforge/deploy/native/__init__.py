"""Native runtimes: whole quantized models in one compiled call (see docs/compress.md, "Native runtime").

>>> from nnforge.deploy.native import NativeEncoder   # an int8 BERT-family encoder, AVX-512 VNNI (AMX tiles where there)
"""

from __future__ import annotations

from nnforge.deploy.native.encoder import NativeEncoder, NativeEncoderModule, amx, native_variant, with_native_encoder

__all__ = ["NativeEncoder", "NativeEncoderModule", "amx", "native_variant", "with_native_encoder"]
