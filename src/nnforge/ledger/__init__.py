"""The audit ledger: append-only, hash-chained events in a store (SQLite, PostgreSQL, JSONL export), signed
heads, and the lineage of an artifact read from the events. What is built on it (review queue, promotion
gate, report, documents, dashboard) lives in :mod:`nnforge.govern`.

>>> from nnforge.ledger import Ledger
>>> led = Ledger.open("/tmp/demo-ledger.db")  # doctest: +SKIP
>>> led.append("note", {"text": "hello"}).hash  # doctest: +SKIP
>>> led.verify().ok  # doctest: +SKIP
True
"""

from __future__ import annotations

from nnforge.ledger._events import GENESIS, Event, Verification, canonical_json, json_safe, verify_chain
from nnforge.ledger._ledger import DEFAULT_LEDGER, Ledger, atomic_write_text, default_actor, file_sha256
from nnforge.ledger._lineage import Lineage, LineageNode, lineage
from nnforge.ledger._store import SQLiteStore, Store, redact_url
from nnforge.ledger.signing import (
    SIGNED_EVENT_KIND,
    SignedHead,
    SignedHeadCheck,
    generate_keypair,
    load_signed_head,
    sign_head,
    verify_signed_head,
    write_signed_head,
)

__all__ = [
    "Ledger",
    "Event",
    "Verification",
    "Store",
    "SQLiteStore",
    "GENESIS",
    "DEFAULT_LEDGER",
    "canonical_json",
    "json_safe",
    "default_actor",
    "redact_url",
    "verify_chain",
    "file_sha256",
    "atomic_write_text",
    "SIGNED_EVENT_KIND",
    "SignedHead",
    "SignedHeadCheck",
    "generate_keypair",
    "sign_head",
    "verify_signed_head",
    "load_signed_head",
    "write_signed_head",
    "Lineage",
    "LineageNode",
    "lineage",
]
