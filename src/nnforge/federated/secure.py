"""Secure aggregation with homomorphic encryption (TenSEAL's CKKS): the server sums the clients' encrypted
updates without seeing any of them; only the key holder decrypts, and only the sum.

Who holds which key:

- the **key holder** (:class:`KeyHolder`) makes the CKKS context and keeps its secret key; it hands out the
  *public* context (the public key and parameters, no secret key) and decrypts nothing but aggregates. In a
  simulation it is an object of the calling process, separate from the aggregation code, which never receives it.
- each **client** gets the public context: it can encrypt, not decrypt (not even its own update once sent).
- the **server** (the aggregator) gets the public context: it can add ciphertexts, not decrypt them.

Packing: each client clips its weighted update ``u · n_k / N`` (``N``: all clients' examples, so the sum is
FedAvg's weighted mean) to ``[-range, range]``, quantizes it to ``bits`` bits, and packs ``fields`` quantized
values into each CKKS slot (``field width = bits + ceil(log2(clients + 1))``, so the sum of every client's field
never carries into the next). With ``poly_modulus_degree`` 8192 and one 60-bit data prime a ciphertext holds
4,096 slots in 128 KiB: 32 bytes a slot, so two 13-bit values a slot cost 16 bytes a value against fp32's 4. The
scale (2^20) keeps every packed sum below 2^39, whose CKKS error (about 0.03 on sums of ten 2^32 integers,
measured) rounds away: the decrypted integer sums are exact, and the aggregate differs from the plaintext
weighted mean only by the quantization (at most ``clients × range / (2^bits - 1)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.errors import MissingDependencyError

__all__ = ["SecureAggregationConfig", "KeyHolder", "Packing", "encrypt_update", "sum_ciphertexts", "decode_sum"]

SCALE_BITS = 20
DATA_BITS = 38  # packed sums stay below 2^38 (< 2^59 / 2^20 with margin)


@config_type("federated.secure")
class SecureAggregationConfig(Config):
    """Homomorphic-encryption aggregation (see :mod:`nnforge.federated.secure`)."""

    method: Literal["he", "secagg+"] = Field("he", description="he: TenSEAL CKKS sums, a key holder decrypts; "
                                                               "secagg+: Flower's SecAgg+ masking (no key holder)")
    secagg_shares: float = Field(1.0, gt=0, description="secagg+: shares of each client's secrets, as a "
                                                       "share of the sampled clients (or a count above 1)")
    secagg_threshold: float = Field(0.5, gt=0, description="secagg+: shares needed to rebuild a secret, as a "
                                                          "share of the shares (or a count above 1)")
    secagg_clip: float = Field(8.0, gt=0, description="secagg+: each weight is clipped to [-clip, clip]")
    secagg_quantization: int = Field(2**22, ge=2, le=2**30, description="secagg+: quantization levels")
    poly_modulus_degree: Literal[8192, 16384] = 8192
    bits: int = Field(13, ge=4, le=24, description="quantization bits per value")
    range: float = Field(0.5, gt=0, description="each client's weighted update is clipped to [-range, range]")
    audit_plaintext: bool = Field(False, description="measurement only: clients also send their plaintext update "
                                                     "and the server records how far the decrypted sum is from it; "
                                                     "never on a real federation")


def _tenseal() -> Any:
    try:
        import tenseal as ts
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("homomorphic-encryption aggregation needs TenSEAL: "
                                     "pip install 'nnforge[federated]'") from exc
    return ts


@dataclass(frozen=True)
class Packing:
    """How quantized values share a slot: ``fields`` values of ``width`` bits each."""

    bits: int
    clients: int

    @property
    def width(self) -> int:
        return self.bits + math.ceil(math.log2(self.clients + 1))

    @property
    def fields(self) -> int:
        return max(1, DATA_BITS // self.width)

    def pack(self, q: np.ndarray) -> np.ndarray:
        """Integers in ``[0, 2^bits)`` → slots (float64, exact: below 2^53)."""
        n = len(q)
        padded = np.zeros(math.ceil(n / self.fields) * self.fields, dtype=np.int64)
        padded[:n] = q
        lanes = padded.reshape(-1, self.fields)
        shifts = np.array([1 << (self.width * j) for j in range(self.fields)], dtype=np.int64)
        return (lanes * shifts).sum(axis=1).astype(np.float64)

    def unpack(self, slots: np.ndarray, n: int) -> np.ndarray:
        """Summed slots → the summed integers of each of the ``n`` values."""
        s = np.rint(slots).astype(np.int64)
        mask = (1 << self.width) - 1
        lanes = np.stack([(s >> (self.width * j)) & mask for j in range(self.fields)], axis=1)
        return lanes.reshape(-1)[:n]


class KeyHolder:
    """Makes the CKKS context, keeps its secret key, hands out the public context, decrypts aggregates."""

    def __init__(self, config: SecureAggregationConfig) -> None:
        ts = _tenseal()
        self.config = config
        self._context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=config.poly_modulus_degree,
                                   coeff_mod_bit_sizes=[60, 60])
        self._context.global_scale = 2.0**SCALE_BITS
        public = self._context.copy()
        public.make_context_public()
        self.public_context: bytes = public.serialize()

    @property
    def slots(self) -> int:
        return self.config.poly_modulus_degree // 2

    def decrypt(self, ciphertexts: list[bytes]) -> np.ndarray:
        """The slots of an aggregate (the concatenation of its ciphertexts' slots)."""
        ts = _tenseal()
        return np.concatenate([np.asarray(ts.ckks_vector_from(self._context, c).decrypt()) for c in ciphertexts])


def public_context(data: bytes) -> Any:
    """A TenSEAL context from public bytes (it refuses to decrypt)."""
    return _tenseal().context_from(data)


def encrypt_update(context: Any, update: np.ndarray, weight: float, config: SecureAggregationConfig,
                   clients: int) -> list[bytes]:
    """A client's ``weight × update`` clipped, quantized, packed and encrypted: one ciphertext per
    ``poly_modulus_degree / 2`` slots."""
    ts = _tenseal()
    r, levels = config.range, (1 << config.bits) - 1
    x = np.clip(update.astype(np.float64) * weight, -r, r)
    q = np.rint((x + r) / (2 * r) * levels).astype(np.int64)
    slots = Packing(config.bits, clients).pack(q)
    per = config.poly_modulus_degree // 2
    return [ts.ckks_vector(context, slots[i:i + per].tolist()).serialize() for i in range(0, len(slots), per)]


def sum_ciphertexts(context: Any, replies: list[list[bytes]]) -> list[bytes]:
    """The aggregator's work: add the clients' ciphertexts chunk by chunk (it cannot decrypt any)."""
    ts = _tenseal()
    out = []
    for chunk in range(len(replies[0])):
        total = ts.ckks_vector_from(context, replies[0][chunk])
        for reply in replies[1:]:
            total += ts.ckks_vector_from(context, reply[chunk])
        out.append(total.serialize())
    return out


def decode_sum(slots: np.ndarray, n: int, summed: int, config: SecureAggregationConfig, clients: int) -> np.ndarray:
    """Decrypted slots of ``summed`` clients' packed values → the sum of their weighted updates (n values)."""
    r, levels = config.range, (1 << config.bits) - 1
    total = Packing(config.bits, clients).unpack(slots, n).astype(np.float64)
    return total * (2 * r) / levels - summed * r
