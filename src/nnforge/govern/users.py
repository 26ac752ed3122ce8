"""Named users with roles: who may review, promote, revoke and manage users, proven by a personal token.

The user store is one JSON file next to the ledger (``.nnforge/users.json`` beside ``.nnforge/ledger.db``):
per user a role, a salted scrypt hash of their token (never the token), an optional expiry and an optional
Ed25519 public key. The token (``NAME:SECRET``, 256 random bits) is shown once, when it is created.

- **Roles** rank ``caller`` < ``reviewer`` < ``approver`` < ``admin``; each action needs a least role
  (:data:`ACTIONS`): a caller asks a served model for predictions (``nnforge serve``), a reviewer also decides
  review items and halts or resumes a server, an approver also promotes and revokes, an admin also manages users.
- **Authentication** (:meth:`UserStore.authenticate`) recomputes the scrypt hash and compares it in constant
  time; an unknown name costs the same work (no timing leak). Every refusal is :class:`AccessDenied` (exit 2)
  and happens before anything is written.
- **Decisions** record the authenticated user (``"user": {name, role, via, key}``) and, when the user has a key
  and acts with a token, an Ed25519 signature over the event's kind, run and data (:func:`decision_data`,
  checked by :func:`verify_decision`), so the ledger shows who decided, not only what.
- **Managing users** is itself recorded (``user.added``, ``user.removed``, ``user.token_rotated``) and needs an
  admin; the first admin may be created only while the store is empty and the ledger has never recorded a user.

Tests lower the scrypt cost with the environment variable ``NNFORGE_SCRYPT_N`` (a power of two, read when a
token is created; the cost is stored with each hash). Never set it in production: the default is 2**15.

>>> store = UserStore.for_ledger(".nnforge/ledger.db")  # doctest: +SKIP
>>> admin, token = store.add("root", "admin", by=None, ledger=led)  # doctest: +SKIP
>>> store.authenticate(token).role  # doctest: +SKIP
'admin'
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnforge.errors import ConfigError, IntegrityError, NnforgeError
from nnforge.ledger import Event, Ledger, canonical_json
from nnforge.ledger.signing import pem_fingerprint, sign_bytes, verify_bytes

__all__ = ["ROLES", "ACTIONS", "USERS_FILE", "SCRYPT_N", "SCRYPT_N_ENV", "AccessDenied", "User", "UserStore",
           "require", "users_file", "decision_data", "verify_decision", "audit_decisions", "simulate_review",
           "DECISION_KINDS"]

ROLES = ("caller", "reviewer", "approver", "admin")
ACTIONS = {"predict": "caller", "review": "reviewer", "halt": "reviewer", "promote": "approver", "revoke": "approver",
           "manage users": "admin"}
"""The least role each action needs (roles rank caller < reviewer < approver < admin)."""
USERS_FILE = "users.json"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SCRYPT_N_ENV = "NNFORGE_SCRYPT_N"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_FORMAT = "nnforge.users/1"
_RANK = {r: i for i, r in enumerate(ROLES, 1)}


class AccessDenied(NnforgeError):
    """No valid credential, or a role too low for the action: refused before anything is written (exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class User:
    """A named user. ``via`` says how this object was authenticated (``token``, ``session``; empty for a record
    read from the store, which authenticates nobody)."""

    name: str
    role: str
    public_key: str | None = None
    key_fingerprint: str | None = None
    expires: str | None = None
    via: str = ""

    def can(self, action: str) -> bool:
        return _RANK.get(self.role, 0) >= _RANK[ACTIONS[action]]

    def record(self) -> dict[str, Any]:
        """What a decision event stores about who made it."""
        return {"name": self.name, "role": self.role, "via": self.via, "key": self.key_fingerprint}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "key": self.key_fingerprint, "expires": self.expires}


def require(user: User | None, action: str) -> User:
    """``user`` if it is authenticated and its role allows ``action``; else :class:`AccessDenied`."""
    if action not in ACTIONS:
        raise ConfigError(f"unknown action {action!r}; one of {list(ACTIONS)}")
    if user is None or not isinstance(user, User) or not user.via:
        raise AccessDenied(f"{action}: refused, no authenticated user. Set NNFORGE_TOKEN to your token or pass "
                           "--token-file FILE (an admin creates one with 'nnforge users add NAME --role ROLE')")
    if not user.can(action):
        raise AccessDenied(f"{action}: refused, {user.name} is a {user.role} and {action} needs the "
                           f"{ACTIONS[action]} role or higher (an admin can change it with 'nnforge users')")
    return user


def users_file(ledger_location: str | os.PathLike[str]) -> Path:
    """The user store beside a ledger file (for a database URL: ``.nnforge/users.json`` here)."""
    loc = str(ledger_location)
    return Path(".nnforge") / USERS_FILE if "://" in loc else Path(loc).parent / USERS_FILE


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _scrypt_n() -> int:
    given = os.environ.get(SCRYPT_N_ENV)
    if not given:
        return SCRYPT_N
    if not given.isdigit() or int(given) < 2 or int(given) & (int(given) - 1) or int(given) > 2**20:
        raise ConfigError(f"{SCRYPT_N_ENV}={given!r}: must be a power of two in [2, 2**20] (default {SCRYPT_N})")
    return int(given)


def _hash(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * r * n + (1 << 20), dklen=32)


def _credential(secret: str) -> dict[str, Any]:
    salt, n = secrets.token_bytes(16), _scrypt_n()
    return {"kdf": "scrypt", "n": n, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex(),
            "hash": _hash(secret, salt, n, SCRYPT_R, SCRYPT_P).hex()}


def _matches(cred: dict[str, Any], secret: str) -> bool:
    try:
        n, r, p = int(cred["n"]), int(cred["r"]), int(cred["p"])
        got = _hash(secret, bytes.fromhex(cred["salt"]), n, r, p)
        return hmac.compare_digest(got, bytes.fromhex(cred["hash"]))
    except (KeyError, TypeError, ValueError):
        return False


def _user(name: str, rec: dict[str, Any], via: str = "") -> User:
    return User(name=name, role=str(rec.get("role")), public_key=rec.get("public_key"),
                key_fingerprint=rec.get("key"), expires=rec.get("expires"), via=via)


class UserStore:
    """The users of one workspace, in one JSON file (see the module docstring). Use :meth:`for_ledger`.

    Every change holds an exclusive lock on ``<file>.lock`` and replaces the file atomically; its mode follows
    the umask (it holds salted hashes, never a token).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def for_ledger(cls, ledger_location: str | os.PathLike[str]) -> UserStore:
        return cls(users_file(ledger_location))

    # --- the file ---------------------------------------------------------------------------------------

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"{self.path}: the user store is unreadable ({exc}); restore it from a backup") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("users"), dict):
            raise IntegrityError(f"{self.path}: not an nnforge user store (expected format {_FORMAT!r})")
        return doc["users"]

    def _write(self, users: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides the mode
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps({"format": _FORMAT, "users": users}, indent=2, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._read()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _change(self, users: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]], ledger: Ledger,
                kind: str, data: dict[str, Any], actor: str | None) -> Event:
        """Write the new store, then its ledger event; without the event the old store comes back."""
        self._write(users)
        try:
            return ledger.append(kind, data, actor=actor)
        except BaseException:
            self._write(before)
            raise

    # --- reading ----------------------------------------------------------------------------------------

    def users(self) -> list[User]:
        return [_user(n, rec) for n, rec in sorted(self._read().items())]

    def get(self, name: str) -> User:
        rec = self._read().get(name)
        if rec is None:
            raise ConfigError(f"no user {name!r} in {self.path} ('nnforge users list' shows them)")
        return _user(name, rec)

    def credential_digest(self, name: str) -> str | None:
        """The stored hash of ``name``'s token (``None`` for no such user): a login session ends when it
        changes (token rotated, user removed)."""
        rec = self._read().get(name)
        return None if rec is None else str(rec.get("hash"))

    def authenticate(self, token: str | None, *, via: str = "token", now: _dt.datetime | None = None) -> User:
        """The user whose token this is, with ``via`` set; :class:`AccessDenied` for no, a malformed, a wrong,
        an expired or a removed user's token (the same scrypt work is done for an unknown name)."""
        if not token:
            raise AccessDenied("refused: no token given. Set NNFORGE_TOKEN or pass --token-file FILE")
        name, _, secret = token.strip().partition(":")
        rec = self._read().get(name) if NAME.match(name) and secret else None
        dummy = {"n": _scrypt_n(), "r": SCRYPT_R, "p": SCRYPT_P, "salt": "00" * 16, "hash": "00" * 32}
        ok = _matches(rec or dummy, secret or "x")  # the same work for an unknown name
        if rec is None or not ok:
            raise AccessDenied("refused: the token is not valid (unknown user, wrong or rotated token)")
        expires = rec.get("expires")
        if expires and _dt.datetime.fromisoformat(expires) <= (now or _now()):
            raise AccessDenied(f"refused: {name}'s token expired at {expires}; an admin issues a new one with "
                               f"'nnforge users token {name}'")
        return _user(name, rec, via)

    # --- changing (each an admin's action, recorded) -------------------------------------------------------

    def add(self, name: str, role: str, *, by: User | None, ledger: Ledger, public_key: str | None = None,
            expires_days: float | None = None) -> tuple[User, str]:
        """Create user ``name`` with ``role``; returns the user and their token (show it once).

        ``by`` must be an authenticated admin, except for the first admin of an empty store whose ledger never
        recorded a user (bootstrap, ``by=None``). ``public_key`` is the PEM of the user's Ed25519 key.
        """
        if not NAME.match(name or ""):
            raise ConfigError(f"user name {name!r}: letters, digits, '_', '.', '-' (starting with a letter or "
                              "digit), at most 64 characters")
        if role not in ROLES:
            raise ConfigError(f"role {role!r} is not one of {list(ROLES)}")
        if expires_days is not None and not 0 < expires_days <= 3650:
            raise ConfigError(f"--expires-days must be in (0, 3650]; got {expires_days}")
        key = pem_fingerprint(public_key) if public_key else None
        with self._locked() as users:
            bootstrap = by is None
            if bootstrap:
                self._check_bootstrap(users, ledger, role)
            else:
                require(by, "manage users")
            if name in users:
                raise ConfigError(f"user {name!r} already exists in {self.path}; remove it first or rotate its "
                                  f"token with 'nnforge users token {name}'")
            token = f"{name}:{secrets.token_urlsafe(32)}"
            rec: dict[str, Any] = {"role": role, **_credential(token.partition(":")[2]),
                                   "created": _now().isoformat(timespec="seconds"), "public_key": public_key,
                                   "key": key, "expires": None}
            if expires_days is not None:
                rec["expires"] = (_now() + _dt.timedelta(days=expires_days)).isoformat(timespec="seconds")
            self._change({**users, name: rec}, users, ledger, "user.added",
                         {"name": name, "role": role, "key": key, "expires": rec["expires"],
                          "by": None if by is None else by.record(), "bootstrap": bootstrap},
                         by.name if by is not None else None)
        return _user(name, rec), token

    def _check_bootstrap(self, users: dict[str, Any], ledger: Ledger, role: str) -> None:
        if users:
            raise AccessDenied("adding a user needs an admin's token (NNFORGE_TOKEN or --token-file)")
        if ledger.events(kind="user.added"):
            raise AccessDenied(f"{self.path} holds no users but the ledger at {ledger.location} recorded some: the "
                               "user store was removed. Restore it from a backup; it is not recreated silently")
        if role != "admin":
            raise ConfigError("the first user must be an admin (--role admin): only an admin can add the others")

    def remove(self, name: str, *, by: User, ledger: Ledger) -> User:
        """Remove ``name`` (an admin's action; the last admin stays). Their token stops working at once."""
        require(by, "manage users")
        with self._locked() as users:
            if name not in users:
                raise ConfigError(f"no user {name!r} in {self.path} ('nnforge users list' shows them)")
            gone = _user(name, users[name])
            if gone.role == "admin" and sum(r.get("role") == "admin" for r in users.values()) == 1:
                raise ConfigError(f"{name} is the last admin; add another admin first")
            rest = {k: v for k, v in users.items() if k != name}
            self._change(rest, users, ledger, "user.removed", {"name": name, "role": gone.role, "by": by.record()},
                         by.name)
        return gone

    def rotate(self, name: str, *, by: User, ledger: Ledger) -> str:
        """A new token for ``name`` (an admin, or the user themself); the old one stops working at once."""
        if by is None or by.name != name:
            require(by, "manage users")
        else:
            require(by, "review")  # any authenticated role may rotate its own token
        with self._locked() as users:
            if name not in users:
                raise ConfigError(f"no user {name!r} in {self.path} ('nnforge users list' shows them)")
            token = f"{name}:{secrets.token_urlsafe(32)}"
            rec = {**users[name], **_credential(token.partition(":")[2])}
            self._change({**users, name: rec}, users, ledger, "user.token_rotated",
                         {"name": name, "by": by.record()}, by.name)
        return token


# --- decisions: who, and signed when the user has a key ---------------------------------------------------------


def _payload(kind: str, run: str | None, data: dict[str, Any]) -> bytes:
    return canonical_json({"kind": kind, "run": run,
                           "data": {k: v for k, v in data.items() if k != "signature"}}).encode("utf-8")


def decision_data(user: User, action: str, kind: str, run: str | None, data: dict[str, Any],
                  key_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``data`` for a decision event, with the authenticated ``user`` and, with ``key_file``, a signature.

    A user with a registered key who acts with a token must sign (``key_file`` = their private key, whose public
    half must be the registered one); a dashboard session (``via="session"``) records the user unsigned.

    Raises:
        AccessDenied: no authenticated user, a role too low, a missing or foreign key.
    """
    require(user, action)
    out = {**data, "user": user.record()}
    if key_file is None:
        if user.key_fingerprint and user.via == "token":
            raise AccessDenied(f"{action}: {user.name} has a registered signing key; pass it with --key-file FILE "
                               "or NNFORGE_KEY so the decision is signed")
        return out
    if not user.key_fingerprint:
        raise AccessDenied(f"{action}: {user.name} has no registered key to sign with (an admin adds one with "
                           f"'nnforge users add {user.name} --key'); leave out --key-file")
    signer, signature = sign_bytes(key_file, _payload(kind, run, out))
    if signer != user.key_fingerprint:
        raise AccessDenied(f"{action}: {key_file} is not {user.name}'s registered key ({signer} is not "
                           f"{user.key_fingerprint})")
    return {**out, "signature": {"algorithm": "ed25519", "key": signer, "value": signature}}


def verify_decision(event: Event, store: UserStore) -> str:
    """``"signed"`` (valid signature by the recorded user's registered key), ``"unsigned"`` or ``"bad"``."""
    sig = event.data.get("signature")
    if not sig:
        return "unsigned"
    who = (event.data.get("user") or {}).get("name")
    try:
        user = store.get(str(who))
    except NnforgeError:
        return "bad"
    if not isinstance(sig, dict) or not user.public_key or sig.get("key") != user.key_fingerprint:
        return "bad"
    ok = verify_bytes(user.public_key, _payload(event.kind, event.run, event.data), str(sig.get("value")))
    return "signed" if ok else "bad"


DECISION_KINDS = ("review.decided", "model.promoted", "model.revoked")


def audit_decisions(ledger: Ledger, store: UserStore) -> dict[str, Any]:
    """Every decision event of ``ledger`` checked for who made it: per event its user, how they authenticated and
    its signature status (``signed``/``unsigned``/``bad``; ``none`` when no authenticated user is recorded, as in
    events written before users existed), and the counts. A ``bad`` signature means the event's data or its
    signature was changed after it was made, or the user's registered key was replaced."""
    rows = []
    for e in ledger.events():
        if e.kind not in DECISION_KINDS:
            continue
        who = e.data.get("user") if isinstance(e.data.get("user"), dict) else None
        status = verify_decision(e, store) if who else "none"
        if who and who.get("name") != e.actor:
            status = "bad"  # the recorded user is not the event's actor: edited
        rows.append({"seq": e.seq, "kind": e.kind, "run": e.run, "actor": e.actor, "user": (who or {}).get("name"),
                     "role": (who or {}).get("role"), "via": (who or {}).get("via"), "signature": status})
    counts = {k: sum(r["signature"] == k for r in rows) for k in ("signed", "unsigned", "bad", "none")}
    return {"decisions": len(rows), **counts, "events": rows}


def simulate_review(workspace: str | os.PathLike[str], decisions: int = 200, forged: int = 100) -> dict[str, int]:
    """The Roles figure: ``decisions`` review decisions through tokens, then ``forged`` forged or missing
    credentials; see :mod:`nnforge.govern._roles_figure`."""
    from nnforge.govern._roles_figure import run

    return run(workspace, decisions=decisions, forged=forged)
