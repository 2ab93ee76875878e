"""The one count of CPUs: engine default threads, the thread sweep, the boards and the governor."""

from __future__ import annotations

import os


def usable() -> int:
    """The CPUs this process may run on (its affinity: taskset, a cpuset cgroup), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def default_threads() -> int:
    """Physical cores when known, else the usable CPUs; never more than the usable CPUs.

    Hyper-threads slow llama.cpp's decode rather than help it, and threads beyond the
    affinity mask only queue behind each other.
    """
    import psutil

    physical = psutil.cpu_count(logical=False)
    return min(physical, usable()) if physical else usable()
