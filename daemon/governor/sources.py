"""The sensor source the config names: the factory, kept apart so no source imports another."""

from __future__ import annotations

import time
from pathlib import Path

from daemon.config import MonitorConfig
from daemon.governor.replay import ReplaySensors
from daemon.governor.sensors import SystemSensors
from daemon.governor.snapshot import MIB, Clock, SensorSource
from daemon.governor.thermalsim import SimulatedSensors


def make_sensors(
    cfg: MonitorConfig, root: Path | None = None, clock: Clock = time.monotonic
) -> SensorSource:
    """The sensor source the config names; root (default cfg.sysfs_root) is where /sys lives."""
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
