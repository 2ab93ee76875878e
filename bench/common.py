"""Shared bench set-up: a loopback broker and a daemon process, reusing the tests' helpers."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from daemon import cpus
from tests.helpers import Broker, Client, Daemon, free_port  # noqa: F401  (re-exported)


def machine() -> str:
    """One line naming the machine a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{cpu}, {cpus.usable()} CPUs, Python {platform.python_version()}"


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgellm-bench-"))


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "p90": round(ordered[max(0, int(len(ordered) * 0.9) - 1)], 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def report(name: str, result: dict[str, Any]) -> None:
    print(json.dumps({"bench": name, "machine": machine(), **result}, indent=2))
