"""A recorded sensor trace (CSV or JSON lines) replayed as Snapshots on the daemon's clock."""

from __future__ import annotations

import bisect
import csv
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from daemon.governor.snapshot import Clock, Snapshot, ThrottleFlags, hottest_cpu

_INT_FIELDS = (
    "mem_total",
    "mem_available",
    "swap_total",
    "swap_used",
    "cgroup_limit",
    "cgroup_current",
)


class ReplaySensors:
    """Replays a recorded trace: the row whose t is the latest at or before the time elapsed."""

    def __init__(self, path: Path, clock: Clock = time.monotonic, loop: bool = False):
        self._rows = load_trace(path)
        self._clock = clock
        self._loop = loop
        t0 = self._rows[0].t
        self._offsets = [row.t - t0 for row in self._rows]
        # Looping holds the last row as long as the step before it, then starts again.
        last_step = self._offsets[-1] - self._offsets[-2] if len(self._rows) > 1 else 0.0
        self._period = self._offsets[-1] + last_step
        self._start: float | None = None

    def read(self) -> Snapshot:
        """The trace row for now; the clock starts at the first read, when monitoring starts."""
        now = self._clock()
        if self._start is None:
            self._start = now
        elapsed = now - self._start
        if self._loop and self._period > 0:
            elapsed %= self._period
        index = max(0, bisect.bisect_right(self._offsets, elapsed) - 1)
        return replace(self._rows[index], t=now)


def load_trace(path: Path) -> list[Snapshot]:
    """A trace file (CSV with a header, or JSON lines) as Snapshots; ValueError names the line."""
    text = path.read_text(encoding="utf-8")
    is_json = path.suffix in (".jsonl", ".ndjson", ".json") or text.lstrip().startswith("{")
    records = _json_records(text) if is_json else _csv_records(text)
    rows: list[Snapshot] = []
    for line, record in records:
        try:
            row = _snapshot_from(record)
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}:{line}: {err}") from None
        if rows and row.t < rows[-1].t:
            raise ValueError(f"{path}:{line}: t goes backwards ({row.t} < {rows[-1].t})")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: the trace has no rows")
    return rows


def _json_records(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"line {number}: not a JSON object")
            yield number, record


def _csv_records(text: str) -> Iterable[tuple[int, dict[str, Any]]]:
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    reader = csv.DictReader(lines)
    # Line numbers count the header as line 1 (comment lines are not counted).
    return ((n, row) for n, row in enumerate(reader, 2))


def _snapshot_from(record: Mapping[str, Any]) -> Snapshot:
    """One trace record; empty cells and nulls are missing sensors, unknown columns are ignored."""

    def value(key: str) -> Any:
        got = record.get(key)
        return None if got is None or (isinstance(got, str) and not got.strip()) else got

    if value("t") is None:
        raise KeyError("t is missing")
    zones = {str(k): float(v) for k, v in (value("zones") or {}).items()}
    # CSV has no nested values: a column "zone.<type>" is one zone.
    for key, raw in record.items():
        if key and key.startswith("zone.") and value(key) is not None:
            zones[key.removeprefix("zone.")] = float(raw)
    temp = value("cpu_temp_c")
    mode = value("jetson_power_mode")
    return Snapshot(
        t=float(value("t")),
        cpu_temp_c=float(temp) if temp is not None else hottest_cpu(zones),
        zones=zones,
        throttle=_throttle_from(value("throttled")),
        jetson_power_mode=str(mode) if mode is not None else None,
        board=str(value("board") or "replay"),
        **{k: int(float(value(k))) if value(k) is not None else None for k in _INT_FIELDS},
    )


def _throttle_from(raw: Any) -> ThrottleFlags | None:
    if raw is None:
        return None
    return ThrottleFlags(raw) if isinstance(raw, int) else ThrottleFlags.parse(str(raw))
