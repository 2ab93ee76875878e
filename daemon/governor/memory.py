"""Memory readings: /proc/meminfo and the cgroup (v1 or v2) this process is charged to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from daemon.governor.snapshot import Snapshot

log = structlog.get_logger(__name__)

# cgroup v1 reports "no limit" as the largest page-aligned signed 64-bit value.
_NO_LIMIT = 1 << 60


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
        # A Jetson's (nvgpu) RAM mapped for the GPU: part of the RAM, so already out of
        # MemAvailable (unified memory); reported so a CUDA model's share shows.
        "gpu_mem_used": info.get("NvMapMemUsed"),
    }


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


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
    text = read_text(root / "proc/self/cgroup") or ""
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


class WarnOnce:
    """One warning per key per sensor source: a broken sensor is not news every second."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, key: str, event: str, **kw: Any) -> None:
        if key not in self._seen:
            self._seen.add(key)
            log.warning(event, **kw)

    def read(self, path: Path, what: str) -> str | None:
        text = read_text(path)
        if text is None:
            self(str(path), "sensor_unreadable", sensor=what, path=str(path))
        return text


def headroom(root: Path = Path("/")) -> int | None:
    """Bytes this process may take now: the host's or its cgroup's room, whichever is less (a
    Snapshot's mem_headroom, read once); None when neither can be read."""
    return Snapshot(t=0.0, **MemoryReader(root).read()).mem_headroom


class MemoryReader:
    """Host memory from meminfo and the cgroup's limit and usage, files found once under root."""

    def __init__(self, root: Path = Path("/"), warn: WarnOnce | None = None):
        self._meminfo = root / "proc/meminfo"
        self.cgroup = find_cgroup(root)
        self._warn = warn or WarnOnce()

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
        known = [v for v in (_limit_value(read_text(p)) for p in cg.limits) if v is not None]
        charged = _limit_value(self._warn.read(cg.current, "cgroup_memory"))
        if charged is not None:
            # Page cache the kernel drops first is charged too; without this a cgroup that once
            # read a big file looks full forever (kubelet's "working set" does the same).
            inactive = _parse_stat(read_text(cg.stat) or "").get(cg.inactive_key, 0)
            charged = max(0, charged - inactive)
        return (min(known) if known else None), charged
