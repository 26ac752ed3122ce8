"""The few exception types nnforge raises.

Every error a user can cause is an :class:`NnforgeError` whose message says what went wrong, where, and
what to do. The CLI prints the message without a traceback and exits with :attr:`NnforgeError.exit_code`
(2 for bad input, 1 for failures while doing the work).
"""

from __future__ import annotations

import os

__all__ = [
    "NnforgeError",
    "ConfigError",
    "DataError",
    "IntegrityError",
    "ModelError",
    "MissingDependencyError",
    "StepFailedError",
]


class NnforgeError(Exception):
    """Base of every error nnforge raises on purpose."""

    exit_code: int = 1


class ConfigError(NnforgeError, ValueError):
    """A config, recipe or parameter is invalid (bad input: exit code 2)."""

    exit_code = 2


class DataError(NnforgeError, ValueError):
    """A data file or dataset is missing, malformed or fails its checksum (bad input: exit code 2)."""

    exit_code = 2


class IntegrityError(NnforgeError):
    """Stored state (ledger, safetensors, archive) does not match what it claims (exit code 2)."""

    exit_code = 2


class ModelError(NnforgeError, ValueError):
    """A model cannot be built or loaded as asked (bad input: exit code 2)."""

    exit_code = 2


class MissingDependencyError(NnforgeError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    exit_code = 2


class StepFailedError(NnforgeError):
    """A recipe step failed while doing its work (exit code 1)."""

    exit_code = 1


def not_utf8(path: os.PathLike[str] | str, exc: UnicodeDecodeError) -> str:
    """``"PATH:LINE: not UTF-8 text (byte 0xff at offset N)"``: where a text file failed to decode."""
    with open(path, "rb") as f:
        line = f.read(exc.start).count(b"\n") + 1
    return f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"


def check_output_path(path: os.PathLike[str] | str) -> None:
    """Refuse an output path that is a folder or an existing SQLite database (a ledger): a path mistyped as
    the ledger's would otherwise replace the whole record. Every writer of user-named files calls this."""
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a folder; give a file path to write to")
    if os.path.isfile(path):
        with open(path, "rb") as f:
            if f.read(16) == b"SQLite format 3\x00":
                raise ConfigError(f"{path}: is a database (a ledger?); refusing to overwrite it, give another path")


def follow_umask(path: os.PathLike[str] | str) -> None:
    """Give a file the mode ``open()`` would have created it with (0666 less the process umask): writers that
    create files 0600 (``tempfile.mkstemp``, safetensors) would otherwise hide a team's shared run files."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:  # Linux: read without changing it
            mask = int(next(ln.split()[1] for ln in f if ln.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, then put it back at once
        os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
