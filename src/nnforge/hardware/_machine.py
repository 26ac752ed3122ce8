"""Facts about the machine that go with every measurement (for reports and bug reports)."""

from __future__ import annotations

import functools
import glob
import os
import platform
import re
import subprocess
from typing import Any

import torch

__all__ = ["machine_facts", "l3_cache_bytes", "UNKNOWN_L3_BYTES"]

# What cold timings assume when the L3 size cannot be read: above every L3 this project has met (480 MB), so
# "cold" errs towards more copies, never fewer; machine_facts() records the assumption beside l3_cache_mb None.
UNKNOWN_L3_BYTES = 512 * 2**20

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNIT = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    # the instruction sets our kernels or a peer's may dispatch on (Linux spells VNNI "avx512_vnni")
    wanted = ("fma", "f16c", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512vnni", "avx_vnni",
              "avx_vnni_int8", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd",
              "asimddp", "i8mm")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def _parse_size(text: str) -> int | None:
    """``"32768K"``, ``"480 MiB"``, ``"33554432"`` -> bytes; None if it is not a size."""
    m = _SIZE.match(text)
    if not m:
        return None
    unit = (m.group(2) or "B").upper()[:1]  # "KiB", "K", "KB" -> "K"; sysfs and lscpu mean powers of 2
    return int(float(m.group(1)) * _UNIT[unit])


def _l3_from_sysfs() -> int | None:
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(os.path.join(index, "level"), encoding="utf-8") as f:
                if f.read().strip() != "3":
                    continue
            with open(os.path.join(index, "size"), encoding="utf-8") as f:
                return _parse_size(f.read().strip())
        except OSError:
            continue
    return None


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _l3_from_lscpu() -> int | None:
    out = _run(["lscpu", "-B"]) or ""
    for line in out.splitlines():
        if line.startswith("L3 cache:"):
            # "L3 cache: 33554432 (1 instance)": the size of one L3, as the sysfs entry of cpu0 gives it
            # where one instance exists; lscpu sums instances, so divide by their count
            value = line.split(":", 1)[1].strip()
            m = re.match(r"(\S+)(?:\s*\((\d+) instances?\))?", value)
            size = _parse_size(m.group(1)) if m else None
            if size is not None and m and m.group(2):
                size //= max(1, int(m.group(2)))
            return size
    return None


def _l3_from_getconf() -> int | None:
    out = (_run(["getconf", "LEVEL3_CACHE_SIZE"]) or "").strip()
    return int(out) if out.isdigit() and int(out) > 0 else None


@functools.lru_cache(maxsize=1)
def l3_cache_bytes() -> tuple[int | None, str | None]:
    """``(size of the last-level L3 cache cpu0 sees, in bytes; where it was read)``, or ``(None, None)``.

    Read from sysfs (``/sys/devices/system/cpu/cpu0/cache/index*/{level,size}``), else ``lscpu -B``, else
    ``getconf LEVEL3_CACHE_SIZE``. Never assumed: machines this project runs on range from 32 MiB to 480 MB.
    """
    for source, read in (("sysfs", _l3_from_sysfs), ("lscpu", _l3_from_lscpu), ("getconf", _l3_from_getconf)):
        size = read()
        if size:
            return size, source
    return None, None


def machine_facts() -> dict[str, Any]:
    """CPU model, flags, cores, L3 size, torch threads, load average (now), memory, versions, accelerator.

    Take it when a measurement starts: ``load_average`` says how busy the machine was then.
    """
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError):
        pass
    l3, l3_source = l3_cache_bytes()
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "l3_cache_mb": round(l3 / 1e6, 3) if l3 else None,  # MB = 10^6 bytes, as every size in results
        "l3_cache_bytes": l3,
        "l3_cache_source": l3_source,
        **({} if l3 else {"l3_assumed_for_cold_mb": round(UNKNOWN_L3_BYTES / 1e6, 3)}),
        "threads": torch.get_num_threads(),
        "torch_threads": torch.get_num_threads(),  # the older name, kept for results files that read it
        "load_average": load,
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
