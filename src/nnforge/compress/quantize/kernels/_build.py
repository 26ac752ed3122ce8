"""Compile ``qgemv.cpp`` (or another nnforge C++ source) with the machine's C++ compiler at first use, cache it,
and load it with ctypes.

The shared library is built once per (source, compiler, flags, CPU) into
``$NNFORGE_CACHE/kernels/<hash>/`` (default ``~/.cache/nnforge/kernels/<hash>/``), written to a temporary
name and renamed, so concurrent first uses never load a half-written file. Any failure (no compiler, a
compile error, a library that does not load) is logged once and reported as ``None``: the caller then
uses the pure-torch path.

ISA choice (``isa`` argument or ``$NNFORGE_KERNELS``): ``auto`` (best the CPU has), ``avx512`` (AVX-512
VNNI), ``avx2``, ``scalar``, or ``torch`` (no compiled code at all).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from nnforge.errors import ConfigError

__all__ = ["load_library", "compile_library", "requested_isa", "ISA_NAMES", "cache_root"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("qgemv.cpp")
ISA_NAMES = {2: "avx512vnni", 1: "avx2", 0: "scalar"}
CHOICES = ("auto", "avx512", "avx2", "scalar", "torch")
_BASE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fopenmp-simd", "-fno-math-errno"]


def cache_root() -> Path:
    """``$NNFORGE_CACHE`` or ``~/.cache/nnforge``."""
    return Path(os.environ.get("NNFORGE_CACHE") or Path.home() / ".cache" / "nnforge")


def requested_isa(isa: str | None = None) -> str:
    """The ISA asked for: ``isa`` if given, else ``$NNFORGE_KERNELS``, else ``auto``."""
    choice = (isa or os.environ.get("NNFORGE_KERNELS") or "auto").lower()
    if choice not in CHOICES:
        raise ConfigError(f"The kernel ISA must be one of {CHOICES} (argument or $NNFORGE_KERNELS). Got {choice!r} instead.")
    return choice


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


@functools.lru_cache(maxsize=4)
def _native_macros(cxx: str) -> frozenset[str]:
    """Preprocessor macros ``-march=native`` defines (which ISA extensions this CPU and compiler have)."""
    try:
        out = subprocess.run([cxx, "-march=native", "-dM", "-E", "-x", "c++", os.devnull],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(line.split()[1] for line in out.splitlines() if line.startswith("#define "))


def _flags_for(choice: str, cxx: str) -> list[str] | None:
    """Compiler flags for an ISA choice, or ``None`` when this CPU/compiler cannot run it."""
    macros = _native_macros(cxx)
    has512 = {"__AVX512F__", "__AVX512BW__", "__AVX512VL__", "__AVX512VNNI__", "__F16C__"} <= macros
    has2 = {"__AVX2__", "__FMA__", "__F16C__"} <= macros
    if choice == "auto":
        choice = "avx512" if has512 else "avx2" if has2 else "scalar"
    if choice == "avx512":
        return ["-march=native"] if has512 else None
    if choice == "avx2":
        return ["-march=x86-64-v3"] if has2 else None
    return ["-march=x86-64"] if platform.machine() in ("x86_64", "AMD64") else []


def _compiler_id(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return cxx


def _build(cxx: str, flags: list[str], source: Path = SOURCE) -> Path:
    """Compile (or find in the cache) the shared library of ``source`` for these flags; returns its path.

    ``source`` may include the headers beside ``qgemv.cpp`` (``thread_pool.h``): that folder is on the
    include path and its headers are part of the cache key.
    """
    headers = sorted({*SOURCE.parent.glob("*.h"), *source.parent.glob("*.h")})
    src = b"".join(f.read_bytes() for f in [source, *headers])
    cpu = "".join(sorted(_native_macros(cxx)))
    key = hashlib.sha256(b"\0".join([src, _compiler_id(cxx).encode(), " ".join(flags).encode(), cpu.encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    out_dir = cache_root() / "kernels" / key
    lib = out_dir / f"libnnf_{source.stem}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".build-", suffix=".so")
    os.close(fd)
    cmd = [cxx, *_BASE_FLAGS, *flags, f"-I{SOURCE.parent}", str(source), "-o", tmp]
    log.info("compiling nnforge kernels: %s", " ".join(cmd))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.nnf_qgemm.restype = i
    lib.nnf_qgemm.argtypes = [vp, i, i, vp, vp, vp, f, f, i, i, i, i, vp, i]
    return lib


def load_library(isa: str | None = None) -> tuple[ctypes.CDLL | None, str]:
    """The compiled kernel library and the name of its ISA path, or ``(None, "torch")`` on any failure."""
    return _load(requested_isa(isa))


@functools.lru_cache(maxsize=8)
def _load(choice: str) -> tuple[ctypes.CDLL | None, str]:
    lib, name = _compile(SOURCE, choice)
    return (None, "torch") if lib is None else (_bind(lib), name)


def compile_library(source: Path, isa: str | None = None) -> tuple[ctypes.CDLL | None, str]:
    """Build (or load from the cache) ``source`` for the requested ISA; ``(None, "torch")`` on any failure.

    ``isa`` as in :func:`requested_isa` (``$NNFORGE_KERNELS`` is read at each call). The library must export
    ``int nnf_isa(void)`` (2: AVX-512 VNNI, 1: AVX2, 0: scalar); the caller binds the rest of its entry points.
    """
    return _compile(source, requested_isa(isa))


@functools.lru_cache(maxsize=16)
def _compile(source: Path, choice: str) -> tuple[ctypes.CDLL | None, str]:
    if choice == "torch":
        return None, "torch"
    cxx = _compiler()
    if cxx is None:
        log.warning("no C++ compiler found (set $CXX): nnforge kernels fall back to pure torch")
        return None, "torch"
    flags = _flags_for(choice, cxx)
    if flags is None:
        log.warning("this CPU/compiler cannot build the %s kernels: falling back to pure torch", choice)
        return None, "torch"
    try:
        lib = ctypes.CDLL(str(_build(cxx, flags, source)))
        lib.nnf_isa.restype = ctypes.c_int
        lib.nnf_isa.argtypes = []
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
        log.warning("nnforge kernels (%s) unavailable, falling back to pure torch: %s", source.name, e)
        return None, "torch"
    return lib, ISA_NAMES.get(lib.nnf_isa(), "scalar")
