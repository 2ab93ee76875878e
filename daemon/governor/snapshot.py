"""The governor's shared data model: a sensor reading (Snapshot) and where readings come from.

Every source (the real machine, a replayed trace, the thermal simulator) produces Snapshots;
the policy and the loop read nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Clock = Callable[[], float]
MIB = 1024 * 1024  # every memory figure is in bytes; configs and logs speak MiB


# Zones that measure the CPU or the die it sits on (Pi "cpu-thermal", Jetson "CPU-therm",
# "SOC0-therm", "tj-therm" = junction max, x86 "x86_pkg_temp", hwmon "coretemp"/"k10temp").
CPU_ZONE = re.compile(r"cpu|soc|tj|x86_pkg|coretemp|k10temp|zenpower", re.IGNORECASE)


@dataclass(frozen=True)
class ThrottleFlags:
    """The Pi firmware's get_throttled word: bits 0-3 happen now, bits 16-19 since boot."""

    raw: int

    @classmethod
    def parse(cls, text: str) -> ThrottleFlags:
        """From "0x50005", "50005" (sysfs is hex without 0x) or vcgencmd's "throttled=0x50005"."""
        return cls(int(text.strip().removeprefix("throttled="), 16))

    @property
    def under_voltage(self) -> bool:
        return bool(self.raw & 0x1)

    @property
    def freq_capped(self) -> bool:
        return bool(self.raw & 0x2)

    @property
    def throttled(self) -> bool:
        return bool(self.raw & 0x4)

    @property
    def soft_temp_limit(self) -> bool:
        return bool(self.raw & 0x8)

    @property
    def slowed_now(self) -> bool:
        """The firmware is slowing the cores right now (capped, throttled or soft limit)."""
        return bool(self.raw & 0xE)

    @property
    def thermal_now(self) -> bool:
        """Throttled or at the soft temperature limit now (a cap alone may be under-voltage)."""
        return bool(self.raw & 0xC)

    @property
    def occurred(self) -> bool:
        """Any of the four has happened since boot."""
        return bool(self.raw & 0xF0000)

    def __str__(self) -> str:
        return hex(self.raw)


@dataclass(frozen=True)
class Snapshot:
    """One reading of everything the governor looks at; None where a sensor is missing."""

    t: float  # monotonic seconds
    cpu_temp_c: float | None = None  # the hottest CPU/SoC zone
    zones: Mapping[str, float] = field(default_factory=dict)  # zone type -> °C
    throttle: ThrottleFlags | None = None
    jetson_power_mode: str | None = None
    mem_total: int | None = None  # bytes, like every memory figure here
    mem_available: int | None = None
    swap_total: int | None = None
    swap_used: int | None = None
    gpu_mem_used: int | None = None  # a Jetson's RAM mapped for the GPU (NvMapMemUsed)
    cgroup_limit: int | None = None  # the tightest memory.max / memory.high; None: no limit
    cgroup_current: int | None = None  # charged memory less the page cache it may drop first
    board: str = "generic"

    @property
    def mem_headroom(self) -> int | None:
        """Bytes this process may still take: the host's or the cgroup's room, whichever is less."""
        bounds = [b for b in (self.mem_available, self._cgroup_room()) if b is not None]
        return min(bounds) if bounds else None

    def _cgroup_room(self) -> int | None:
        if self.cgroup_limit is None or self.cgroup_current is None:
            return None
        return max(0, self.cgroup_limit - self.cgroup_current)


class SensorSource(Protocol):
    """Where Snapshots come from: the real machine, a replayed trace, a simulator."""

    def read(self) -> Snapshot: ...


@runtime_checkable
class LoadAware(Protocol):
    """A source modelled on the daemon's own work (the simulator): the loop tells it the load.

    Real sensors see the load themselves and do not implement this.
    """

    def set_load(self, threads: int, busy: bool) -> None: ...


def hottest_cpu(zones: Mapping[str, float]) -> float | None:
    """The CPU/SoC temperature: the hottest zone that measures the CPU or its die."""
    temps = [c for name, c in zones.items() if CPU_ZONE.search(name)]
    return max(temps) if temps else None
