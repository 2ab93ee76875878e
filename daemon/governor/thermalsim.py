"""A first-order thermal model as a sensor source, heated by the daemon's real activity."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

from daemon.governor.memory import MemoryReader
from daemon.governor.snapshot import Clock, Snapshot, ThrottleFlags


class SimulatedSensors:
    """A first-order thermal model heated by the daemon's real work and cooled toward ambient.

    dT/dt = heat_per_thread * threads * busy - cool * (T - (ambient + idle_rise)), solved exactly
    between load changes, so readings do not depend on how often they are taken. The defaults give
    a Pi 5 without a fan: 4 busy threads cross 85 °C after about 2.5 minutes (settling near
    90 °C), 3 settle near 76 °C, and an idle board is back under 45 °C within two minutes.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        ambient_c: float = 25.0,
        idle_rise_c: float = 10.0,
        heat_per_thread_c_s: float = 0.22,
        cool_per_s: float = 0.016,
        throttle_c: float | None = 85.0,
        mem_total: int | None = None,
        mem_available: int | None = None,
        root: Path = Path("/"),
    ):
        self._clock = clock
        self._idle_c = ambient_c + idle_rise_c
        self._heat = heat_per_thread_c_s
        self._cool = cool_per_s
        self._throttle_c = throttle_c
        self._lock = threading.Lock()  # set_load comes from the engine, read from the monitor
        self._temp = self._idle_c
        self._load = 0.0  # busy threads
        self._at = clock()
        self._since_boot = 0
        # Memory is the real machine's unless fixed figures are given (a test of a small board).
        self._memory: MemoryReader | None = None
        self._fixed: dict[str, Any] = {}
        if mem_available is None:
            self._memory = MemoryReader(root)
        else:
            total = mem_total if mem_total is not None else mem_available
            self._fixed = {"mem_total": total, "mem_available": mem_available}

    @property
    def steady_c(self) -> float:
        """Where the temperature settles under the current load."""
        return self._idle_c + self._heat * self._load / self._cool

    def set_load(self, threads: int, busy: bool) -> None:
        """The daemon's work from now on: threads generating (busy) or idle."""
        with self._lock:
            self._advance(self._clock())
            self._load = float(threads) if busy else 0.0

    def read(self) -> Snapshot:
        """The modelled temperature now, with the real or the fixed memory figures."""
        now = self._clock()
        throttle = None
        with self._lock:
            self._advance(now)
            temp = self._temp
            if self._throttle_c is not None:
                # Like the Pi firmware: capped and throttled while hot, remembered since boot.
                now_bits = 0x6 if temp >= self._throttle_c else 0
                self._since_boot |= now_bits << 16
                throttle = ThrottleFlags(now_bits | self._since_boot)
        return Snapshot(
            t=now,
            cpu_temp_c=round(temp, 2),
            zones={"cpu-thermal": round(temp, 2)},
            throttle=throttle,
            board="simulated",
            **(self._memory.read() if self._memory is not None else self._fixed),
        )

    def _advance(self, now: float) -> None:
        dt = max(0.0, now - self._at)
        steady = self.steady_c
        self._temp = steady + (self._temp - steady) * math.exp(-self._cool * dt)
        self._at = now
