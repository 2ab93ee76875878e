"""Sensor readings as frozen Snapshots from the real machine; the source the config names."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from daemon import boards
from daemon.config import MonitorConfig

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
MIB = 1024 * 1024

# Zones that measure the CPU or the die it sits on (Pi "cpu-thermal", Jetson "CPU-therm",
# "SOC0-therm", "tj-therm" = junction max, x86 "x86_pkg_temp", hwmon "coretemp"/"k10temp").
_CPU_ZONE = re.compile(r"cpu|soc|tj|x86_pkg|coretemp|k10temp|zenpower", re.IGNORECASE)
# Jetson Nano's "PMIC-Die" reads a constant 100 °C and "thermal-fan-est" is an estimate.
_IGNORED_ZONE = re.compile(r"pmic|fan-est", re.IGNORECASE)
# Offline Jetson zones read -40 °C or absurd values; neither is a temperature to act on.
_PLAUSIBLE_C = (-30.0, 150.0)
# cgroup v1 reports "no limit" as the largest page-aligned signed 64-bit value.
_NO_LIMIT = 1 << 60
_THROTTLE_PATHS = ("sys/devices/platform/soc/soc:firmware/get_throttled",)
# The Pi 5's firmware node has another name; find it by pattern when the usual path is absent.
_THROTTLE_GLOBS = (
    "sys/devices/platform/*/*firmware/get_throttled",
    "sys/devices/platform/*firmware/get_throttled",
)
_POWER_MODEL = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)")
_PM_DEFAULT = re.compile(r"<\s*PM_CONFIG\s+DEFAULT=(\d+)")


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
    """Where Snapshots come from; set_load tells a model-driven source what the daemon does."""

    def read(self) -> Snapshot: ...

    def set_load(self, threads: int, busy: bool) -> None: ...


def hottest_cpu(zones: Mapping[str, float]) -> float | None:
    """The CPU/SoC temperature: the hottest zone that measures the CPU or its die."""
    temps = [c for name, c in zones.items() if _CPU_ZONE.search(name)]
    return max(temps) if temps else None


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes per key ("MemAvailable" -> 123456789)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            out[key.strip()] = int(parts[0]) * scale
    return out


def memory_fields(info: Mapping[str, int]) -> dict[str, int | None]:
    """The Snapshot's memory fields from parsed meminfo."""
    available = info.get("MemAvailable")
    if available is None and "MemFree" in info:
        # Kernels before 3.14 have no MemAvailable; free + buffers + page cache is its old estimate.
        available = info["MemFree"] + info.get("Buffers", 0) + info.get("Cached", 0)
    swap_total = info.get("SwapTotal")
    swap_free = info.get("SwapFree")
    return {
        "mem_total": info.get("MemTotal"),
        "mem_available": available,
        "swap_total": swap_total,
        "swap_used": swap_total - swap_free
        if swap_total is not None and swap_free is not None
        else None,
    }


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


# -- cgroup memory -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupFiles:
    """The files that bound this process's memory, found once: limits, usage, reclaimable cache."""

    version: int
    limits: tuple[Path, ...]  # this cgroup's and its ancestors' (any of them can bind)
    current: Path
    stat: Path
    inactive_key: str


def find_cgroup(root: Path = Path("/")) -> CgroupFiles | None:
    """The memory cgroup of this process under root (v2, else v1), or None when there is none."""
    text = _read(root / "proc/self/cgroup") or ""
    entries = [line.split(":", 2) for line in text.splitlines() if line.count(":") >= 2]
    base = root / "sys/fs/cgroup"
    # v2 only when the unified hierarchy is mounted at the top, not a hybrid's "unified".
    if (base / "cgroup.controllers").exists():
        for _, controllers, path in entries:
            found = _cgroup_dir(base, path, "memory.current") if controllers == "" else None
            if found:
                own, chain = found
                limits = tuple(d / name for d in chain for name in ("memory.max", "memory.high"))
                return CgroupFiles(
                    version=2,
                    limits=limits,
                    current=own / "memory.current",
                    stat=own / "memory.stat",
                    inactive_key="inactive_file",
                )
    for _, controllers, path in entries:
        if "memory" in controllers.split(","):
            found = _cgroup_dir(base / "memory", path, "memory.usage_in_bytes")
            if found:
                own, chain = found
                return CgroupFiles(
                    version=1,
                    limits=tuple(d / "memory.limit_in_bytes" for d in chain),
                    current=own / "memory.usage_in_bytes",
                    stat=own / "memory.stat",
                    inactive_key="total_inactive_file",
                )
    return None


def _cgroup_dir(base: Path, path: str, marker: str) -> tuple[Path, list[Path]] | None:
    """The cgroup's directory and its ancestors up to base, or None when it has no memory files."""
    own = base / path.lstrip("/")
    # In a container without a cgroup namespace the listed path does not exist inside; the
    # container's own cgroup is then mounted at the base itself.
    for cand in (own, base):
        if (cand / marker).exists():
            chain = [cand]
            while chain[-1] != base and base in chain[-1].parents:
                chain.append(chain[-1].parent)
            return cand, chain
    return None


def _limit_value(text: str | None) -> int | None:
    if text is None:
        return None
    value = text.strip()
    if not value.isdigit():  # "max"
        return None
    number = int(value)
    return None if number >= _NO_LIMIT else number


def _parse_stat(text: str) -> dict[str, int]:
    """A cgroup memory.stat ("inactive_file 1234" per line)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


class _WarnOnce:
    """One warning per key per sensor source: a broken sensor is not news every second."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, key: str, event: str, **kw: Any) -> None:
        if key not in self._seen:
            self._seen.add(key)
            log.warning(event, **kw)

    def read(self, path: Path, what: str) -> str | None:
        text = _read(path)
        if text is None:
            self(str(path), "sensor_unreadable", sensor=what, path=str(path))
        return text


class MemoryReader:
    """Host memory from meminfo and the cgroup's limit and usage, files found once under root."""

    def __init__(self, root: Path = Path("/"), warn: _WarnOnce | None = None):
        self._meminfo = root / "proc/meminfo"
        self.cgroup = find_cgroup(root)
        self._warn = warn or _WarnOnce()

    @property
    def has_meminfo(self) -> bool:
        return self._meminfo.exists()

    def read(self) -> dict[str, Any]:
        """The Snapshot's memory fields; None where a file is missing or unreadable."""
        fields = memory_fields(parse_meminfo(self._warn.read(self._meminfo, "meminfo") or ""))
        fields["cgroup_limit"], fields["cgroup_current"] = self._read_cgroup()
        return fields

    def _read_cgroup(self) -> tuple[int | None, int | None]:
        cg = self.cgroup
        if cg is None:
            return None, None
        # memory.high exists only below the root cgroup; a missing file is no bound.
        known = [v for v in (_limit_value(_read(p)) for p in cg.limits) if v is not None]
        charged = _limit_value(self._warn.read(cg.current, "cgroup_memory"))
        if charged is not None:
            # Page cache the kernel drops first is charged too; without this a cgroup that once
            # read a big file looks full forever (kubelet's "working set" does the same).
            inactive = _parse_stat(_read(cg.stat) or "").get(cg.inactive_key, 0)
            charged = max(0, charged - inactive)
        return (min(known) if known else None), charged


# -- the real machine ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Zone:
    name: str
    paths: tuple[Path, ...]  # one thermal zone's temp, or a hwmon's temp*_input (hottest wins)


class SystemSensors:
    """This machine's sensors under root: paths are found once, then read on every call."""

    def __init__(
        self,
        root: Path = Path("/"),
        clock: Clock = time.monotonic,
        board: boards.BoardProfile | None = None,
    ):
        self._root = root
        self._clock = clock
        self._board = board or boards.detect(root)
        self._warn = _WarnOnce()
        self._zones = _find_zones(root)
        self._throttle = _find_throttle(root)
        self._power_names, self._power_default = _power_modes(root)
        self._power_status = root / "var/lib/nvpmodel/status"
        self._memory = MemoryReader(root, self._warn)
        missing = []
        if not any(_CPU_ZONE.search(z.name) for z in self._zones):
            missing.append("cpu_temperature")
        if self._throttle is None and self._board.has_throttle_flags:
            missing.append("throttle_flags")
        if not self._memory.has_meminfo:
            missing.append("meminfo")
        # One line at start rather than one per reading: an x86 box simply has no such sensor.
        if missing:
            log.warning("sensors_missing", missing=missing, board=self._board.name, root=str(root))
        log.info(
            "sensors_found",
            board=self._board.name,
            zones=[z.name for z in self._zones],
            throttle=self._throttle is not None,
            cgroup=self._memory.cgroup.version if self._memory.cgroup else None,
        )

    def set_load(self, threads: int, busy: bool) -> None:
        """Real sensors see the load themselves."""

    def read(self) -> Snapshot:
        """One reading; a sensor that fails is None in it (and warned about once)."""
        zones = self._read_zones()
        return Snapshot(
            t=self._clock(),
            cpu_temp_c=hottest_cpu(zones),
            zones=zones,
            throttle=self._read_throttle(),
            jetson_power_mode=self._read_power_mode(),
            board=self._board.name,
            **self._memory.read(),
        )

    def _read_zones(self) -> dict[str, float]:
        zones: dict[str, float] = {}
        for zone in self._zones:
            temps = []
            for path in zone.paths:
                text = self._warn.read(path, zone.name)
                try:
                    celsius = int((text or "").strip()) / 1000
                except ValueError:
                    continue
                if _PLAUSIBLE_C[0] <= celsius <= _PLAUSIBLE_C[1]:
                    temps.append(celsius)
                else:
                    self._warn(f"{path}:range", "sensor_implausible", zone=zone.name, c=celsius)
            if temps:
                zones[zone.name] = max(temps)
        return zones

    def _read_throttle(self) -> ThrottleFlags | None:
        if self._throttle is None:
            return None
        text = self._warn.read(self._throttle, "throttle_flags")
        try:
            return ThrottleFlags.parse(text) if text is not None else None
        except ValueError:
            self._warn("throttle:parse", "sensor_unparsable", sensor="throttle", text=text)
            return None

    def _read_power_mode(self) -> str | None:
        if not self._power_names and self._power_default is None:
            return None
        status = _read(self._power_status) or ""
        match = re.search(r"pmode:\s*(\d+)", status)
        mode = int(match.group(1)) if match else self._power_default
        if mode is None:
            return None
        return self._power_names.get(mode, f"mode {mode}")


def _find_zones(root: Path) -> list[_Zone]:
    zones: list[_Zone] = []
    seen: set[str] = set()
    thermal = sorted(
        (root / "sys/class/thermal").glob("thermal_zone*"),
        key=lambda p: int(re.sub(r"\D", "", p.name) or 0),
    )
    for zdir in thermal:
        name = (_read(zdir / "type") or "").strip()
        if not name or _IGNORED_ZONE.search(name) or not (zdir / "temp").exists():
            continue
        # Several zones may share a type (x86 "acpitz"): keep each under its own key.
        key = name if name not in seen else f"{name}:{zdir.name.removeprefix('thermal_zone')}"
        seen.add(key)
        zones.append(_Zone(key, (zdir / "temp",)))
    if any(_CPU_ZONE.search(z.name) for z in zones):
        return zones
    # x86 often reports the CPU only through hwmon (coretemp, k10temp): the hottest input wins.
    for hdir in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        name = (_read(hdir / "name") or "").strip()
        inputs = tuple(sorted(hdir.glob("temp*_input")))
        if name and _CPU_ZONE.search(name) and inputs and name not in seen:
            seen.add(name)
            zones.append(_Zone(name, inputs))
    return zones


def _find_throttle(root: Path) -> Path | None:
    for rel in _THROTTLE_PATHS:
        if (root / rel).exists():
            return root / rel
    for pattern in _THROTTLE_GLOBS:
        for path in sorted(root.glob(pattern)):
            return path
    return None


def _power_modes(root: Path) -> tuple[dict[int, str], int | None]:
    """nvpmodel's mode names by id and its default mode, from /etc/nvpmodel.conf."""
    conf = _read(root / "etc/nvpmodel.conf") or ""
    names = {int(i): n for i, n in _POWER_MODEL.findall(conf)}
    default = _PM_DEFAULT.search(conf)
    return names, int(default.group(1)) if default else None


def make_sensors(
    cfg: MonitorConfig, root: Path | None = None, clock: Clock = time.monotonic
) -> SensorSource:
    """The sensor source the config names; root (default cfg.sysfs_root) is where /sys lives."""
    from daemon.replay import ReplaySensors
    from daemon.thermalsim import SimulatedSensors

    root = root if root is not None else cfg.sysfs_root
    if cfg.source == "replay":
        assert cfg.trace is not None  # the config's validator requires it
        return ReplaySensors(cfg.trace, clock, loop=cfg.trace_loop)
    if cfg.source == "sim":
        sim = cfg.sim
        return SimulatedSensors(
            clock,
            ambient_c=sim.ambient_c,
            idle_rise_c=sim.idle_rise_c,
            heat_per_thread_c_s=sim.heat_per_thread_c_s,
            cool_per_s=sim.cool_per_s,
            throttle_c=sim.throttle_c,
            mem_total=sim.mem_total_mb * MIB if sim.mem_total_mb is not None else None,
            mem_available=sim.mem_available_mb * MIB if sim.mem_available_mb is not None else None,
            root=root,
        )
    return SystemSensors(root, clock)
