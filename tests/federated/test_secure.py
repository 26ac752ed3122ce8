"""Secure aggregation with TenSEAL's CKKS: the decrypted sum of packed, encrypted updates equals the plaintext
weighted sum up to the quantization; the public context cannot decrypt; a federation aggregates through it."""

from __future__ import annotations

import numpy as np
import pytest

from nnforge.federated.secure import (
    KeyHolder,
    Packing,
    SecureAggregationConfig,
    decode_sum,
    encrypt_update,
    public_context,
    sum_ciphertexts,
)


def test_packing_round_trips_and_never_carries_between_fields():
    p = Packing(bits=13, clients=10)
    assert p.width == 17 and p.fields == 2
    rng = np.random.default_rng(0)
    qs = [rng.integers(0, 2**13, size=9) for _ in range(10)]
    qs[0][:] = 2**13 - 1  # the largest values everywhere: the sums must not spill into the next field
    total = sum(p.pack(q) for q in qs)
    assert np.array_equal(p.unpack(total, 9), sum(q.astype(np.int64) for q in qs))


def test_the_decrypted_sum_is_the_plaintext_weighted_sum_up_to_quantization():
    config = SecureAggregationConfig(bits=13, range=0.5)
    holder = KeyHolder(config)
    ctx = public_context(holder.public_context)
    rng = np.random.default_rng(1)
    n, clients = 16_384, 10
    updates = [rng.normal(0, 0.05, n) for _ in range(clients)]
    weights = rng.dirichlet(np.ones(clients))
    replies = [encrypt_update(ctx, u, w, config, clients) for u, w in zip(updates, weights, strict=True)]
    assert len(replies[0]) == 2  # 16,384 values, 2 a slot, 4,096 slots a ciphertext
    per_value = sum(len(c) for c in replies[0]) / n
    assert per_value < 4 * 4.2  # full ciphertexts: 16 bytes a value, 4x fp32
    summed = sum_ciphertexts(ctx, replies)
    got = decode_sum(holder.decrypt(summed), n, clients, config, clients)
    want = sum(u * w for u, w in zip(updates, weights, strict=True))
    step = 2 * config.range / (2**config.bits - 1)
    assert np.abs(got - want).max() <= clients * step / 2 + 1e-9
    assert np.abs(got - want).max() < 1e-3


def test_the_public_context_cannot_decrypt():
    import tenseal as ts

    holder = KeyHolder(SecureAggregationConfig())
    ctx = public_context(holder.public_context)
    assert not ctx.has_secret_key()
    ct = encrypt_update(ctx, np.zeros(10), 1.0, SecureAggregationConfig(), 3)[0]
    with pytest.raises(ValueError):
        ts.ckks_vector_from(ctx, ct).decrypt()
