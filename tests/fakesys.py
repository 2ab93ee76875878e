"""Fake sysfs/procfs trees of the boards edgellm runs on, for the monitor's root parameter."""

from __future__ import annotations

import struct
from pathlib import Path

from daemon.governor.snapshot import MIB


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def write(root: Path, rel: str, text: str | bytes) -> Path:
    """Create root/rel with text, making its folders."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def meminfo(
    total_mb: int,
    available_mb: int,
    swap_total_mb: int = 0,
    swap_free_mb: int = 0,
    nvmap_mb: int | None = None,
) -> str:
    """A /proc/meminfo with the lines the monitor reads, plus a few it must skip; nvmap_mb
    adds a Jetson's NvMapMemUsed (RAM mapped for the GPU)."""
    kb = 1024
    jetson = "" if nvmap_mb is None else f"NvMapMemUsed:   {nvmap_mb * kb} kB\n"
    return jetson + (
        f"MemTotal:       {total_mb * kb} kB\n"
        f"MemFree:        {available_mb * kb // 2} kB\n"
        f"MemAvailable:   {available_mb * kb} kB\n"
        "Buffers:            9028 kB\n"
        f"SwapTotal:      {swap_total_mb * kb} kB\n"
        f"SwapFree:       {swap_free_mb * kb} kB\n"
        "HugePages_Total:       0\n"
    )


def thermal_zone(root: Path, index: int, zone_type: str, celsius: float | None) -> Path:
    """/sys/class/thermal/thermal_zone<index> with its type and (millidegree) temp."""
    base = f"sys/class/thermal/thermal_zone{index}"
    write(root, f"{base}/type", f"{zone_type}\n")
    if celsius is None:
        return root / base / "temp"
    return write(root, f"{base}/temp", f"{round(celsius * 1000)}\n")


def cgroup_v2(
    root: Path,
    path: str = "/system.slice/edgellm.service",
    max_bytes: int | None = None,
    high_bytes: int | None = None,
    current: int = 300 * MIB,
    inactive_file: int = 0,
) -> Path:
    """A unified (v2) hierarchy with this process in path; None limits are "max"."""
    write(root, "proc/self/cgroup", f"0::{path}\n")
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n")
    own = f"sys/fs/cgroup/{path.strip('/')}" if path.strip("/") else "sys/fs/cgroup"
    write(root, f"{own}/memory.max", f"{max_bytes if max_bytes is not None else 'max'}\n")
    write(root, f"{own}/memory.high", f"{high_bytes if high_bytes is not None else 'max'}\n")
    write(root, f"{own}/memory.current", f"{current}\n")
    write(
        root,
        f"{own}/memory.stat",
        f"anon {current - inactive_file}\ninactive_file {inactive_file}\n",
    )
    return root / own


def cgroup_v1(root: Path, path: str, limit: int | None, usage: int, inactive_file: int = 0) -> Path:
    """A v1 memory controller (a hybrid host like this one); None limit is the kernel's "none"."""
    write(
        root,
        "proc/self/cgroup",
        f"9:name=systemd:/\n4:memory:{path}\n1:cpu:/\n0::/\n",
    )
    write(root, "sys/fs/cgroup/unified/cgroup.procs", "1\n")  # hybrid: v2 without controllers
    own = f"sys/fs/cgroup/memory/{path.strip('/')}"
    no_limit = 9223372036854771712
    write(root, f"{own}/memory.limit_in_bytes", f"{limit if limit is not None else no_limit}\n")
    write(root, f"{own}/memory.usage_in_bytes", f"{usage}\n")
    write(root, f"{own}/memory.stat", f"cache 0\ntotal_inactive_file {inactive_file}\n")
    write(root, "sys/fs/cgroup/memory/memory.limit_in_bytes", f"{no_limit}\n")
    return root / own


def pi5(root: Path, temp_c: float = 52.5, throttled: str = "0") -> Path:
    """A Raspberry Pi 5 (8 GB) on Pi OS bookworm: cpu-thermal, get_throttled, cgroup v2."""
    write(root, "proc/device-tree/model", b"Raspberry Pi 5 Model B Rev 1.0\x00")
    thermal_zone(root, 0, "cpu-thermal", temp_c)
    write(root, "sys/devices/platform/soc/soc:firmware/get_throttled", f"{throttled}\n")
    write(root, "proc/meminfo", meminfo(8048, 7100, 512, 512))
    cgroup_v2(root, current=250 * MIB)
    return root


def pi4(root: Path, temp_c: float = 61.3) -> Path:
    """A Raspberry Pi 4 (2 GB) on an older Pi OS: a v1 memory cgroup with a 1.5 GB limit."""
    write(root, "proc/device-tree/model", b"Raspberry Pi 4 Model B Rev 1.4\x00")
    thermal_zone(root, 0, "cpu-thermal", temp_c)
    write(root, "sys/devices/platform/soc/soc:firmware/get_throttled", "50005\n")
    write(root, "proc/meminfo", meminfo(1848, 1200, 100, 60))
    cgroup_v1(root, "/system.slice/edgellm.service", 1536 * MIB, 900 * MIB, 100 * MIB)
    return root


def jetson_orin(root: Path, cpu_c: float = 55.0, tj_c: float = 57.5) -> Path:
    """A Jetson Orin Nano: Tegra release, many zones (one offline, one bogus), nvpmodel mode."""
    write(root, "proc/device-tree/model", b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    write(root, "etc/nv_tegra_release", "# R36 (release), REVISION: 3.0, GCID: 36923193\n")
    thermal_zone(root, 0, "CPU-therm", cpu_c)
    thermal_zone(root, 1, "GPU-therm", 52.0)
    thermal_zone(root, 2, "CV0-therm", -256.0)  # an offline zone reads nonsense
    thermal_zone(root, 3, "SOC0-therm", 53.1)
    thermal_zone(root, 4, "PMIC-Die", 100.0)  # a constant, not a temperature
    thermal_zone(root, 5, "tj-therm", tj_c)
    write(
        root,
        "etc/nvpmodel.conf",
        "< PARAM TYPE=FILE NAME=CPU_ONLINE >\n"
        "< POWER_MODEL ID=0 NAME=15W >\nCPU_ONLINE CORE_0 1\n"
        "< POWER_MODEL ID=1 NAME=7W >\nCPU_ONLINE CORE_0 1\n"
        "< PM_CONFIG DEFAULT=0 >\n",
    )
    write(root, "var/lib/nvpmodel/status", "pmode:0001 fmode:quiet\n")
    write(root, "proc/meminfo", meminfo(7620, 5900, 3810, 3810, nvmap_mb=312))
    cgroup_v2(root, current=400 * MIB)
    return root


def container(
    root: Path, max_mb: int = 1024, current_mb: int = 900, inactive_mb: int = 300
) -> Path:
    """An x86 container limited by cgroup v2, with a namespace: it sees its cgroup as "/"."""
    write(root, "proc/meminfo", meminfo(64000, 50000))
    cgroup_v2(
        root,
        path="/",
        max_bytes=max_mb * MIB,
        current=current_mb * MIB,
        inactive_file=inactive_mb * MIB,
    )
    return root


def x86_bare(root: Path) -> Path:
    """An x86 VM: meminfo, an ACPI zone that is not the CPU, no device tree, no cgroup files."""
    write(root, "proc/meminfo", meminfo(16000, 12000))
    thermal_zone(root, 0, "acpitz", 27.8)
    return root


# /proc/cpuinfo's Features as the kernel lists them: a Pi 4 (Cortex-A72) and a Pi 5 (Cortex-A76).
A72_FEATURES = "fp asimd evtstrm crc32 cpuid"
A76_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
    "asimddp"
)
# A PC without AVX2 (a Celeron J4125: Goldmont Plus) and one with it (x86-64-v3).
GOLDMONT_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt aes rdrand"
HASWELL_FLAGS = f"{GOLDMONT_FLAGS} avx avx2 fma f16c bmi1 bmi2 movbe"
# Bits of AT_HWCAP (arch/arm64/include/uapi/asm/hwcap.h) for the features above.
HWCAP_BITS = {"fp": 0, "asimd": 1, "atomics": 8, "fphp": 9, "asimdhp": 10, "asimdrdm": 12}
HWCAP_BITS |= {"asimddp": 20}


def cpuinfo_arm(root: Path, features: str, part: str = "0xd08", cores: int = 4) -> Path:
    """/proc/cpuinfo of a 64-bit Arm board (0xd08: Cortex-A72, 0xd0b: Cortex-A76)."""
    block = (
        "processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {p}\nCPU revision\t: 3\n\n"
    )
    return write(
        root, "proc/cpuinfo", "".join(block.format(n=n, f=features, p=part) for n in range(cores))
    )


def cpuinfo_x86(
    root: Path, flags: str, model: str = "Intel(R) Celeron(R) J4125 CPU @ 2.00GHz"
) -> Path:
    """/proc/cpuinfo of a PC (one core is enough for the readers)."""
    return write(
        root, "proc/cpuinfo", f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n"
    )


def auxv(root: Path, features: str) -> Path:
    """/proc/self/auxv (64-bit little-endian pairs) with the AT_HWCAP bits of features."""
    hwcap = sum(1 << HWCAP_BITS[f] for f in features.split() if f in HWCAP_BITS)
    pairs = [(6, 4096), (16, hwcap), (26, 0), (0, 0)]  # AT_PAGESZ, AT_HWCAP, AT_HWCAP2, AT_NULL
    return write(root, "proc/self/auxv", b"".join(struct.pack("<QQ", k, v) for k, v in pairs))
