"""What the device did while `edgellm bench` ran: the process's peak resident memory and the
CPU's temperature before and after."""

from __future__ import annotations

import threading

RSS_INTERVAL_S = 0.05


def temperatures(before: float | None, after: float | None) -> dict[str, float | None]:
    """Before, after and the rise, °C; the rise is None unless both were read."""
    rise = round(after - before, 1) if before is not None and after is not None else None
    return {"before": before, "after": after, "rise": rise}


def read_temp() -> float | None:
    """The hottest CPU zone now, °C; None without a sensor (or when reading it fails)."""
    from daemon.governor.sensors import SystemSensors

    try:
        return SystemSensors().read().cpu_temp_c
    except Exception:  # a figure in a report is not worth a crash (STYLE.md habit 8)
        return None


class PeakRss(threading.Thread):
    """The process's largest resident set while in the block, sampled every RSS_INTERVAL_S
    (ru_maxrss would count whatever the process held before)."""

    def __init__(self) -> None:
        super().__init__(name="bench-rss", daemon=True)
        self.peak, self._stop_event = 0, threading.Event()

    def run(self) -> None:
        import psutil

        proc = psutil.Process()
        while self.peak == 0 or not self._stop_event.wait(RSS_INTERVAL_S):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()
        self.join()
