"""What this device is, for `edgellm advise`: board, memory, free disk, cores, CPU features and,
on a Jetson, the GPU's share of the (unified) memory. Each reading that fails is None, never an
error: advice on a board with no device tree or no cgroup is still advice."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from daemon import cpus
from daemon.engine import cpuprobe
from daemon.governor import boards
from daemon.governor.memory import MemoryReader
from daemon.governor.snapshot import Snapshot

# The CPU features that decide which llama.cpp kernels run (x86 and arm64 names).
FEATURES = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "asimd", "asimddp", "i8mm", "sve")


@dataclass(frozen=True)
class Device:
    board: str  # a boards profile name: raspberry-pi-5, jetson-orin, generic...
    board_model: str  # the device-tree model string ("" on x86)
    cpu: str
    cores: int  # usable by this process
    features: tuple[str, ...]
    ram_total: int | None  # bytes
    mem_available: int | None  # bytes a model may take now (MemAvailable, cgroup limit)
    margin: int  # bytes the board keeps free (the governor's margin)
    disk_free: int | None  # bytes free where models are kept
    unified_gpu: bool  # a Jetson: the GPU shares the RAM counted above
    gpu_mem_used: int | None = None  # of it, mapped for the GPU now (a Jetson's NvMapMemUsed)


def read(models_dir: Path, root: Path = Path("/")) -> Device:
    profile = boards.detect(root)
    fields = MemoryReader(root).read()
    snap = Snapshot(t=0.0, **fields)
    return Device(
        board=profile.name,
        board_model=profile.model,
        cpu=cpuprobe.cpu_model(),
        cores=cpus.usable(),
        features=cpu_features(root),
        ram_total=fields.get("mem_total"),
        mem_available=snap.mem_headroom,
        margin=profile.mem_margin_bytes,
        disk_free=disk_free(models_dir),
        unified_gpu=profile.name.startswith("jetson"),
        gpu_mem_used=fields.get("gpu_mem_used"),
    )


def cpu_features(root: Path = Path("/")) -> tuple[str, ...]:
    """Which of FEATURES /proc/cpuinfo lists (the first flags or Features line)."""
    with contextlib.suppress(OSError):
        for line in (root / "proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                have = set(value.split())
                return tuple(f for f in FEATURES if f in have)
    return ()


def disk_free(directory: Path) -> int | None:
    """Free bytes on the filesystem that holds directory (or its nearest existing parent)."""
    path = directory.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
