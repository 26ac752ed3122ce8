"""Signed ledger heads: an Ed25519 signature over the chain's head, so a rewrite is detectable offline.

A hash chain alone proves only that it is *internally* consistent: an attacker with write access can
delete the newest events or rewrite the whole chain with recomputed hashes, and :meth:`Ledger.verify`
still says ``ok``. A signed head pins the chain at one point: ``{head, seq, time, signer}`` signed with
a private key that the attacker does not hold. Later, :func:`verify_signed_head` checks the signature
with the public key and that the signed head is still the event at position ``seq`` of a valid chain,
which fails after a truncation below ``seq`` or after any rewrite of events ``1..seq``.

``cryptography`` is imported lazily (extra ``nnforge[govern]``).

>>> priv, pub = generate_keypair("keys/")  # doctest: +SKIP
>>> signed = sign_head(led, priv)  # doctest: +SKIP
>>> verify_signed_head(led, signed, pub).ok  # doctest: +SKIP
True
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnforge.errors import ConfigError, IntegrityError, MissingDependencyError, check_output_path
from nnforge.ledger._events import Verification, canonical_json

if TYPE_CHECKING:
    from nnforge.ledger._ledger import Ledger

__all__ = [
    "SIGNED_EVENT_KIND",
    "PRIVATE_KEY_NAME",
    "PUBLIC_KEY_NAME",
    "SignedHead",
    "SignedHeadCheck",
    "generate_keypair",
    "key_fingerprint",
    "sign_head",
    "verify_signed_head",
    "load_signed_head",
    "write_signed_head",
    "public_key_pem",
    "pem_fingerprint",
    "sign_bytes",
    "verify_bytes",
]

SIGNED_EVENT_KIND = "ledger.signed"
PRIVATE_KEY_NAME = "ledger_ed25519.pem"
PUBLIC_KEY_NAME = "ledger_ed25519.pub.pem"
_FORMAT = "nnforge.signed-head/1"
_ALGORITHM = "ed25519"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise MissingDependencyError("signing ledger heads needs 'cryptography': pip install 'nnforge[govern]'") from exc
    return serialization, ed25519


def _write_bytes_atomic(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write through a temporary file created with ``mode`` (never wider), fsync, then link/rename into place."""
    check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and refuses to clobber an existing key
            except FileExistsError:
                raise ConfigError(f"{path}: a key file already exists there; move it away or choose another "
                                  "folder (keys are never overwritten)") from None
            os.unlink(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _raw_public(public_key: Any) -> bytes:
    serialization, _ = _crypto()
    raw: bytes = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def key_fingerprint(public_key: Any) -> str:
    """``sha256:<hex>`` of the raw 32-byte Ed25519 public key: names the signer in a signed head."""
    return "sha256:" + hashlib.sha256(_raw_public(public_key)).hexdigest()


def generate_keypair(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> tuple[Path, Path]:
    """Create an Ed25519 key pair in ``out_dir``; returns ``(private_key_path, public_key_path)``.

    The private key is unencrypted PKCS#8 PEM with mode 0600 (keep it off the machine that holds the
    ledger, or an attacker who can rewrite the ledger can also re-sign it); the public key is PEM
    (SubjectPublicKeyInfo), mode 0644, to hand to whoever verifies. Existing files are not overwritten
    unless ``overwrite``.
    """
    serialization, ed25519 = _crypto()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: not a folder; keygen needs a folder to write {PRIVATE_KEY_NAME} and "
                          f"{PUBLIC_KEY_NAME} into")
    key = ed25519.Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    priv_path, pub_path = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    if not overwrite and pub_path.exists():
        raise ConfigError(f"{pub_path}: a key file already exists there; move it away, choose another folder, "
                          "or replace the pair on purpose with --force")
    _write_bytes_atomic(priv_path, priv_pem, 0o600, overwrite)
    _write_bytes_atomic(pub_path, pub_pem, 0o644, overwrite)
    return priv_path, pub_path


def _read_key_file(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no {what} key file there (create a pair with 'nnforge ledger keygen --out DIR')")
    return p.read_bytes()


def _load_private(path: str | os.PathLike[str]) -> Any:
    serialization, ed25519 = _crypto()
    data = _read_key_file(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc}); expected the "
                          f"{PRIVATE_KEY_NAME} written by 'nnforge ledger keygen'") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, but ledger heads are signed with Ed25519 keys")
    return key


def _load_public(path: str | os.PathLike[str]) -> Any:
    serialization, ed25519 = _crypto()
    data = _read_key_file(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a PEM public key ({exc}); expected the {PUBLIC_KEY_NAME} written by "
                          "'nnforge ledger keygen'") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, but ledger heads are verified with Ed25519 keys")
    return key


@dataclass(frozen=True)
class SignedHead:
    """A signature over the ledger head: ``head`` is the hash of event ``seq``, signed at ``time`` (UTC).

    ``signer`` is the fingerprint of the public key; ``signature`` is base64 Ed25519 over
    :meth:`payload` (canonical JSON of every other field).
    """

    head: str
    seq: int
    time: str
    signer: str
    signature: str
    format: str = _FORMAT
    algorithm: str = _ALGORITHM

    def payload(self) -> bytes:
        """The exact bytes that are signed."""
        return canonical_json({"format": self.format, "algorithm": self.algorithm, "head": self.head,
                               "seq": self.seq, "time": self.time, "signer": self.signer}).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "algorithm": self.algorithm, "head": self.head, "seq": self.seq,
                "time": self.time, "signer": self.signer, "signature": self.signature}

    @classmethod
    def from_dict(cls, doc: Any, where: str = "signed head") -> SignedHead:
        """Parse a dict written by :meth:`to_dict`; raises :class:`ConfigError` naming what is malformed."""
        if not isinstance(doc, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        fields = {"format": str, "algorithm": str, "head": str, "seq": int, "time": str, "signer": str,
                  "signature": str}
        missing = [k for k in fields if k not in doc]
        if missing:
            raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}; expected {', '.join(fields)}")
        extra = sorted(set(doc) - set(fields))
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}; allowed: {', '.join(fields)}")
        for k, typ in fields.items():
            if not isinstance(doc[k], typ) or isinstance(doc[k], bool):
                raise ConfigError(f"{where}: field {k!r} must be {typ.__name__}, got {doc[k]!r}")
        if doc["format"] != _FORMAT or doc["algorithm"] != _ALGORITHM:
            raise ConfigError(f"{where}: format {doc['format']!r} / algorithm {doc['algorithm']!r} not supported; "
                              f"expected {_FORMAT!r} / {_ALGORITHM!r}")
        return cls(head=doc["head"], seq=doc["seq"], time=doc["time"], signer=doc["signer"],
                   signature=doc["signature"], format=doc["format"], algorithm=doc["algorithm"])


@dataclass(frozen=True)
class SignedHeadCheck:
    """Outcome of :func:`verify_signed_head`: ``ok``, the reason when not, and the chain verification."""

    ok: bool
    reason: str
    signature_ok: bool
    chain: Verification | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "signature_ok": self.signature_ok,
                "chain": self.chain.to_dict() if self.chain is not None else None}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def sign_head(ledger: Ledger, private_key_path: str | os.PathLike[str], *, record: bool = True) -> SignedHead:
    """Sign the current head of ``ledger`` (which must verify) and, with ``record``, append the signed
    head to the ledger as a ``ledger.signed`` event (whose own hash is then the new head).

    Raises:
        ConfigError: the key file is missing/malformed, or the ledger is empty.
        IntegrityError: the chain does not verify (a broken chain is never signed).
    """
    key = _load_private(private_key_path)
    result = ledger.verify()  # one read snapshot: head and count belong together
    if not result.ok:
        raise IntegrityError(f"{ledger.location}: refusing to sign a broken chain: "
                             f"event #{result.broken_seq}: {result.reason}")
    if result.events == 0:
        raise ConfigError(f"{ledger.location}: the ledger is empty; there is no head to sign")
    unsigned = SignedHead(head=result.head, seq=result.events, time=_now(),
                          signer=key_fingerprint(key.public_key()), signature="")
    signature = base64.b64encode(key.sign(unsigned.payload())).decode("ascii")
    signed = SignedHead(head=unsigned.head, seq=unsigned.seq, time=unsigned.time, signer=unsigned.signer,
                        signature=signature)
    if record:
        ledger.append(SIGNED_EVENT_KIND, signed.to_dict())
    return signed


def verify_signed_head(ledger: Ledger, signed: SignedHead, public_key_path: str | os.PathLike[str]) -> SignedHeadCheck:
    """Check ``signed`` against the public key and the ledger.

    Fails (``ok=False`` with a reason) when the key is not the signer's, the signature does not match
    the fields (the file was edited), the chain is broken, or the signed head is no longer event
    ``seq`` of the chain (newest events deleted below it, or the chain rewritten with recomputed hashes).
    """
    pub = _load_public(public_key_path)  # raises MissingDependencyError first when cryptography is absent
    from cryptography.exceptions import InvalidSignature

    fp = key_fingerprint(pub)
    if fp != signed.signer:
        return SignedHeadCheck(False, f"the head was signed by key {signed.signer}, not by {public_key_path} "
                                      f"({fp})", False)
    try:
        sig = base64.b64decode(signed.signature, validate=True)
        pub.verify(sig, signed.payload())
    except (InvalidSignature, binascii.Error, ValueError):
        return SignedHeadCheck(False, "the signature does not match the signed head's fields: the signed-head "
                                      "file was altered", False)
    chain = ledger.verify(head=signed.head)
    if not chain.ok:
        at = f" at event #{chain.broken_seq}" if chain.broken_seq else ""
        return SignedHeadCheck(False, f"the chain does not verify{at}: {chain.reason}", True, chain)
    at_seq = next((h for s, h, _ in ledger.store.rows() if s == signed.seq), None)
    if at_seq != signed.head:
        return SignedHeadCheck(False, f"event #{signed.seq} is not the signed head {signed.head} "
                                      f"(found {at_seq}): the chain was rewritten", True, chain)
    return SignedHeadCheck(True, "", True, chain)


def write_signed_head(signed: SignedHead, path: str | os.PathLike[str]) -> Path:
    """Write the signed head as a small JSON file (atomically)."""
    from nnforge.ledger._ledger import atomic_write_text

    atomic_write_text(path, json.dumps(signed.to_dict(), indent=2, sort_keys=True) + "\n")
    return Path(path)


def load_signed_head(path: str | os.PathLike[str]) -> SignedHead:
    """Read a signed-head JSON file; raises :class:`ConfigError` when it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no signed-head file there (write one with 'nnforge ledger sign --out FILE')")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid JSON ({exc})") from None
    return SignedHead.from_dict(doc, where=str(p))


# --- signatures by a person's key (decisions: reviews, promotions, revocations) ----------------------------


def public_key_pem(path: str | os.PathLike[str]) -> str:
    """The PEM text of the Ed25519 public key at ``path`` (checked to be one)."""
    serialization, _ = _crypto()
    pem: bytes = _load_public(path).public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode("ascii")


def pem_fingerprint(pem: str) -> str:
    """``sha256:<hex>`` of the raw Ed25519 public key in ``pem`` (the same as :func:`key_fingerprint`)."""
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise ConfigError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"a {type(key).__name__}, but decisions are signed with Ed25519 keys")
    return key_fingerprint(key)


def sign_bytes(private_key_path: str | os.PathLike[str], payload: bytes) -> tuple[str, str]:
    """Sign ``payload`` with the Ed25519 private key at ``private_key_path``; returns ``(fingerprint, base64
    signature)``."""
    key = _load_private(private_key_path)
    return key_fingerprint(key.public_key()), base64.b64encode(key.sign(payload)).decode("ascii")


def verify_bytes(public_pem: str, payload: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is the Ed25519 signature of ``payload`` by the key in ``public_pem``."""
    serialization, _ = _crypto()
    from cryptography.exceptions import InvalidSignature

    try:
        key = serialization.load_pem_public_key(public_pem.encode("ascii"))
        key.verify(base64.b64decode(signature, validate=True), payload)  # type: ignore[union-attr, call-arg]
    except (InvalidSignature, binascii.Error, ValueError, TypeError, UnicodeEncodeError):
        return False
    return True
