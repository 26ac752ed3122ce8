"""Energy: RAPL counters where the kernel lets us read them, otherwise an estimate labelled as one.

Two sources, and every figure says which one it came from (``source``):

* ``"rapl"``: the CPU packages' energy counters, ``/sys/class/powercap/intel-rapl:N/energy_uj`` (Intel, and
  AMD Zen on Linux 5.8+). They count the whole package, every process on it: on a shared machine a figure is
  an upper bound for the code measured. The counters wrap at ``max_energy_range_uj``; a wrap between two
  readings is undone, and :meth:`EnergyMeter.poll` keeps long runs (more than one wrap period, minutes at
  hundreds of watts) correct when called now and then. Since 2020 most kernels make ``energy_uj``
  readable by root only; then the estimate is used.
* ``"estimate"``: this process's CPU time (every thread: ``time.process_time``) × a power figure per busy
  core. The default, :data:`DEFAULT_WATTS_PER_CORE` = 6 W, is a package's TDP divided by its cores for
  current parts (AMD EPYC 7763 280 W / 64 = 4.4 W, Intel Xeon 8480+ 350 W / 56 = 6.3 W, a 28 W four-core
  laptop part 7 W). Give the figure for your machine with ``watts_per_core=`` or the
  ``NNFORGE_WATTS_PER_CORE`` environment variable. It counts only the dynamic share of this process (no idle
  power, no memory, no accelerator): a rough figure, never to be reported without its label.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from nnforge.errors import ConfigError

__all__ = ["DEFAULT_WATTS_PER_CORE", "RAPL_ROOT", "ENERGY_SOURCES", "EnergyReading", "EnergyMeter", "energy_source",
           "rapl_domains", "counter_delta_uj", "energy_per_call", "energy_label",
           "energy_method"]

log = logging.getLogger(__name__)

RAPL_ROOT = "/sys/class/powercap"
DEFAULT_WATTS_PER_CORE = 6.0
WATTS_ENV = "NNFORGE_WATTS_PER_CORE"
ENERGY_SOURCES = ("rapl", "estimate")
POLL_S = 10.0  # RAPL counters wrap after max_energy_range_uj (about 60 s at 1 kW for a 2^32 uJ range)


@dataclass(frozen=True)
class RaplDomain:
    """One package counter: its ``energy_uj`` file and the value at which it wraps to 0."""

    name: str
    energy_path: str
    max_uj: int

    def read_uj(self) -> int:
        with open(self.energy_path, encoding="ascii") as f:
            return int(f.read().strip())


@dataclass(frozen=True)
class EnergyReading:
    """Energy used between :meth:`EnergyMeter.start` and :meth:`EnergyMeter.stop`."""

    joules: float
    source: str  # "rapl" or "estimate"
    wall_s: float
    cpu_s: float  # this process's CPU time (all threads) over the interval
    watts_per_core: float | None  # the figure an estimate used; None for "rapl"
    domains: tuple[str, ...] = ()  # the RAPL packages summed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def rapl_domains(root: str = RAPL_ROOT) -> list[RaplDomain]:
    """The readable package-level RAPL counters under ``root`` (empty where there are none or none is readable).

    Only top-level ``intel-rapl:N`` zones named ``package-*`` are used: their ``core``/``uncore``/``dram``
    sub-zones are parts of the package (or, for dram, of no package) and a ``psys`` zone includes the packages,
    so summing either would count energy twice.
    """
    domains: list[RaplDomain] = []
    for zone in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
        if os.path.basename(zone).count(":") != 1:  # intel-rapl:0:1 is a sub-zone
            continue
        try:
            with open(os.path.join(zone, "name"), encoding="ascii") as f:
                name = f.read().strip()
        except OSError:
            continue
        energy = os.path.join(zone, "energy_uj")
        max_uj = _read_int(os.path.join(zone, "max_energy_range_uj"))
        if not name.startswith("package") or max_uj is None or max_uj <= 0 or _read_int(energy) is None:
            continue
        domains.append(RaplDomain(name, energy, max_uj))
    return domains


def counter_delta_uj(before: int, after: int, max_uj: int) -> int:
    """Microjoules between two readings of a counter that wraps to 0 after ``max_uj`` (at most one wrap)."""
    return after - before if after >= before else after + (max_uj - before) + 1


def _watts_per_core(given: float | None) -> float:
    if given is None:
        env = os.environ.get(WATTS_ENV)
        if env is None:
            return DEFAULT_WATTS_PER_CORE
        try:
            given = float(env)
        except ValueError:
            raise ConfigError(f"{WATTS_ENV} must be a number of watts per busy core (e.g. 6); got {env!r}") from None
        where = f"The {WATTS_ENV} environment variable"
    else:
        where = "The 'watts_per_core' parameter of EnergyMeter"
    if isinstance(given, bool) or not given > 0 or given == float("inf"):
        raise ConfigError(f"{where} must be watts per busy core, a float in the range (0, inf). Got {given!r} instead.")
    return float(given)


def energy_source(*, rapl_root: str = RAPL_ROOT) -> str:
    """``"rapl"`` where a package energy counter is readable on this machine, else ``"estimate"``."""
    return "rapl" if rapl_domains(rapl_root) else "estimate"


class EnergyMeter:
    """Measure the energy a block of code uses: ``with EnergyMeter() as m: …`` then ``m.reading``.

    Args:
        watts_per_core: the power of one busy core for the estimate (default: ``NNFORGE_WATTS_PER_CORE`` or
            :data:`DEFAULT_WATTS_PER_CORE`); recorded in the reading.
        source: ``"auto"`` (RAPL where readable, else the estimate), ``"rapl"`` (an error where unreadable) or
            ``"estimate"``.
        rapl_root: where the powercap zones live (tests point it at a fake tree).
    """

    def __init__(self, *, watts_per_core: float | None = None, source: str = "auto",
                 rapl_root: str = RAPL_ROOT) -> None:
        if source not in ("auto", *ENERGY_SOURCES):
            raise ConfigError(f"The 'source' parameter of EnergyMeter must be one of 'auto', 'rapl', 'estimate'. "
                              f"Got {source!r} instead.")
        self._domains = rapl_domains(rapl_root) if source != "estimate" else []
        if source == "rapl" and not self._domains:
            raise ConfigError(f"no readable RAPL package counter under {rapl_root} (energy_uj is often root-only); "
                              "use source='auto' or 'estimate'")
        self.source = "rapl" if self._domains else "estimate"
        self.watts_per_core = None if self.source == "rapl" else _watts_per_core(watts_per_core)
        self._last: list[int] = []
        self._uj = 0
        self._t0 = self._cpu0 = 0.0
        self._reading: EnergyReading | None = None
        self._lock = threading.Lock()
        self._stop_polling: threading.Event | None = None
        self._poller: threading.Thread | None = None

    def start(self) -> EnergyMeter:
        self._reading = None
        self._uj = 0
        self._last = [d.read_uj() for d in self._domains]
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()
        if self._domains and self._stop_polling is None:
            # a background poll every POLL_S folds the counters in, so a block longer than a counter's wrap
            # period (minutes at high power) is still measured right without the caller polling
            stop = self._stop_polling = threading.Event()
            self._poller = threading.Thread(target=self._poll_until, args=(stop,), name="nnforge-energy", daemon=True)
            self._poller.start()
        return self

    def _poll_until(self, stop: threading.Event) -> None:
        while not stop.wait(POLL_S):
            try:
                self.poll()
            except (OSError, ValueError) as exc:  # a counter unreadable for a moment: the next poll catches up
                log.debug("energy counter poll failed: %s", exc)

    def poll(self) -> None:
        """Fold the counters' progress since the last reading in (a background thread does this every
        ``POLL_S`` seconds while the meter runs; calling it more often does no harm)."""
        with self._lock:
            now = [d.read_uj() for d in self._domains]
            self._uj += sum(counter_delta_uj(b, a, d.max_uj)
                            for b, a, d in zip(self._last, now, self._domains, strict=True))
            self._last = now

    def stop(self) -> EnergyReading:
        if self._stop_polling is not None:
            self._stop_polling.set()
            if self._poller is not None:
                self._poller.join()
            self._stop_polling = self._poller = None
        self.poll()
        wall, cpu = time.perf_counter() - self._t0, time.process_time() - self._cpu0
        joules = self._uj / 1e6 if self.source == "rapl" else cpu * (self.watts_per_core or 0.0)
        self._reading = EnergyReading(joules, self.source, wall, cpu, self.watts_per_core,
                                      tuple(d.name for d in self._domains))
        return self._reading

    @property
    def reading(self) -> EnergyReading:
        if self._reading is None:
            raise RuntimeError("EnergyMeter.reading is available after stop() (or the end of its with-block)")
        return self._reading

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def energy_per_call(fn: Callable[[], Any], calls: int = 20, *, watts_per_core: float | None = None,
                    inference_mode: bool = True) -> EnergyReading:
    """The energy of one call of ``fn``: ``calls`` calls in a row under an :class:`EnergyMeter`, divided by
    ``calls`` (``joules``, ``wall_s`` and ``cpu_s`` of the returned reading are per call). The calls run under
    ``torch.inference_mode()``, as deployed inference, unless ``inference_mode=False``."""
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise ConfigError(f"The 'calls' parameter of energy_per_call must be an int in the range [1, inf). "
                          f"Got {calls!r} instead.")
    import torch

    with torch.inference_mode(inference_mode), EnergyMeter(watts_per_core=watts_per_core) as meter:
        for _ in range(calls):
            fn()
    r = meter.reading
    return EnergyReading(r.joules / calls, r.source, r.wall_s / calls, r.cpu_s / calls, r.watts_per_core, r.domains)


def energy_method(*, watts_per_core: float | None = None) -> dict[str, Any]:
    """How energy is measured on this machine now: ``{"source", "watts_per_core", "label"}`` (a report's note)."""
    meter = EnergyMeter(watts_per_core=watts_per_core)
    facts: dict[str, Any] = {"source": meter.source, "watts_per_core": meter.watts_per_core}
    return {**facts, "label": energy_label(facts)}


def energy_label(reading: EnergyReading | dict[str, Any]) -> str:
    """How a reading was obtained, for a report: ``"RAPL counters"`` or ``"estimate: CPU time x 6 W per busy core"``."""
    r = reading if isinstance(reading, dict) else reading.to_dict()
    if r.get("source") == "rapl":
        return "RAPL counters"
    return f"estimate: CPU time x {r.get('watts_per_core'):g} W per busy core"
