"""The real machine's sensors (sysfs thermal zones, hwmon, the Pi's throttle word, Jetson
power modes, memory) read into frozen Snapshots; a missing sensor is None, never an exception."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.governor import boards
from daemon.governor.memory import MemoryReader, WarnOnce, read_text
from daemon.governor.snapshot import CPU_ZONE, Clock, Snapshot, ThrottleFlags, hottest_cpu

log = structlog.get_logger(__name__)

# Jetson Nano's "PMIC-Die" reads a constant 100 °C and "thermal-fan-est" is an estimate.
_IGNORED_ZONE = re.compile(r"pmic|fan-est", re.IGNORECASE)
# Offline Jetson zones read -40 °C or absurd values; neither is a temperature to act on.
_PLAUSIBLE_C = (-30.0, 150.0)
_THROTTLE_PATHS = ("sys/devices/platform/soc/soc:firmware/get_throttled",)
# The Pi 5's firmware node has another name; find it by pattern when the usual path is absent.
_THROTTLE_GLOBS = (
    "sys/devices/platform/*/*firmware/get_throttled",
    "sys/devices/platform/*firmware/get_throttled",
)
_POWER_MODEL = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)")
_PM_DEFAULT = re.compile(r"<\s*PM_CONFIG\s+DEFAULT=(\d+)")


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
        self._warn = WarnOnce()
        self._zones = _find_zones(root)
        self._throttle = _find_throttle(root)
        self._power_names, self._power_default = _power_modes(root)
        self._power_status = root / "var/lib/nvpmodel/status"
        self._memory = MemoryReader(root, self._warn)
        missing = []
        if not any(CPU_ZONE.search(z.name) for z in self._zones):
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
        status = read_text(self._power_status) or ""
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
        name = (read_text(zdir / "type") or "").strip()
        if not name or _IGNORED_ZONE.search(name) or not (zdir / "temp").exists():
            continue
        # Several zones may share a type (x86 "acpitz"): keep each under its own key.
        key = name if name not in seen else f"{name}:{zdir.name.removeprefix('thermal_zone')}"
        seen.add(key)
        zones.append(_Zone(key, (zdir / "temp",)))
    if any(CPU_ZONE.search(z.name) for z in zones):
        return zones
    # x86 often reports the CPU only through hwmon (coretemp, k10temp): the hottest input wins.
    for hdir in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        name = (read_text(hdir / "name") or "").strip()
        inputs = tuple(sorted(hdir.glob("temp*_input")))
        if name and CPU_ZONE.search(name) and inputs and name not in seen:
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
    conf = read_text(root / "etc/nvpmodel.conf") or ""
    names = {int(i): n for i, n in _POWER_MODEL.findall(conf)}
    default = _PM_DEFAULT.search(conf)
    return names, int(default.group(1)) if default else None
