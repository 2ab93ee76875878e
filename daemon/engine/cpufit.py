"""Does the installed llama.cpp build fit this CPU? What it needs, what the CPU has, what fits.

The CPU probe (cpuprobe.py) finds *that* llama.cpp dies here; this module says *why* and what to
do, for its error message. What the build needs comes from llama_cpp/edgellm-build.json, which
deploy/build-wheel.sh puts into every wheel it builds (the board and llama.cpp's CMake flags);
llama.cpp's own system_info cannot tell it on Arm, where it reports a feature only when the build
has it *and* the CPU does (ggml-cpu.c, ggml_cpu_has_dotprod). What the CPU has comes from the
kernel: on 64-bit Arm the HWCAP words of the auxiliary vector (/proc/self/auxv), which qemu-user
fills in for the CPU it emulates (QEMU_CPU), while it passes the host's /proc/cpuinfo through
unchanged; elsewhere /proc/cpuinfo's flags. Every reader takes a root, so tests use a fake tree.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

BUILD_INFO_NAME = "edgellm-build.json"
_AT_HWCAP, _AT_HWCAP2 = 16, 26  # linux include/uapi/linux/auxvec.h
# arch/arm64/include/uapi/asm/hwcap.h: bit -> the name /proc/cpuinfo's Features line uses.
_HWCAP = {0: "fp", 1: "asimd", 8: "atomics", 9: "fphp", 10: "asimdhp", 12: "asimdrdm"}
_HWCAP |= {20: "asimddp", 22: "sve"}
_HWCAP2 = {1: "sve2", 13: "i8mm", 14: "bf16"}
# The names people know them by (Arm's -march extensions); x86 flags are already those.
NICKNAMES = {"asimddp": "dotprod", "fphp": "fp16", "asimdhp": "fp16 SIMD", "atomics": "lse"}
# What each -march extension adds to what the CPU must have (GCC's aarch64 option docs).
_ARM_EXTENSIONS = {
    "dotprod": {"asimddp"},
    "fp16": {"fphp", "asimdhp"},
    "i8mm": {"i8mm"},
    "sve": {"sve"},
    "sve2": {"sve2"},
    "bf16": {"bf16"},
}
# Armv8.1-A made LSE atomics and RDMA part of the base: GCC may emit them for -march=armv8.1-a on.
_ARM_V81 = {"atomics", "asimdrdm"}
# llama.cpp's x86 options (ggml/src/ggml-cpu/CMakeLists.txt) -> the /proc/cpuinfo flag they need.
_X86_OPTIONS = {
    "SSE42": "sse4_2",
    "AVX": "avx",
    "AVX2": "avx2",
    "FMA": "fma",
    "F16C": "f16c",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512_vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_TILE": "amx_tile",
    "AMX_INT8": "amx_int8",
    "AMX_BF16": "amx_bf16",
}
# Of a native build machine's features, those a -march=native llama.cpp may use.
_RELEVANT = set(_X86_OPTIONS.values()) | {"asimddp", "fphp", "asimdhp", "i8mm", "sve", "sve2"}
# The portable builds of deploy/boards.sh and what each needs; the first that fits is named.
PORTABLE = (
    ("pi5", "aarch64", "-march=armv8.2-a+dotprod+fp16", {"asimddp", "fphp", "asimdhp"}),
    ("pi4", "aarch64", "-march=armv8-a", {"fp", "asimd"}),
    ("x86-portable", "x86_64", "x86-64-v3", {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}),
)


@dataclass(frozen=True)
class Cpu:
    """This CPU as llama.cpp meets it."""

    arch: str  # the machine the code runs as (uname -m)
    model: str
    features: frozenset[str]
    source: str  # where the features came from
    emulated: str = ""  # "" on real hardware, else why this looks like qemu-user

    def key(self) -> str:
        """What a cached probe verdict must match: another emulated CPU is another CPU."""
        return f"{self.arch}|{self.model}|{' '.join(sorted(self.features))}|{self.emulated}"


@dataclass(frozen=True)
class Build:
    """The installed llama-cpp-python and what it was built for (None: not known)."""

    version: str
    board: str | None = None
    cmake_args: str = ""
    requires: frozenset[str] | None = None

    def target(self) -> str:
        """The CPU target in words: -march=..., x86 options, or native."""
        args = self.cmake_args.split()
        for arg in args:
            if arg.startswith("-DGGML_CPU_ARM_ARCH="):
                return "-march=" + arg.split("=", 1)[1]
        if "-DGGML_NATIVE=OFF" in args:
            return " ".join(_options_on(args)) or "generic"
        return "the CPU it was built on (GGML_NATIVE)"


def _cpuinfo(root: Path) -> tuple[str, str, set[str]]:
    """(cpuinfo's architecture, model, features); ('', '', set()) when unreadable."""
    arch, model, flags = "", "", set[str]()
    with contextlib.suppress(OSError):
        for line in (root / "proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu part", "hardware") and not model:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                arch = "x86_64" if key == "flags" else "aarch64"
                flags = set(value.split())
    return arch, model, flags


def _hwcaps(root: Path) -> tuple[int, int] | None:
    """AT_HWCAP and AT_HWCAP2 of this process (64-bit little-endian auxv), or None."""
    try:
        raw = (root / "proc/self/auxv").read_bytes()
    except OSError:
        return None
    pairs = dict(struct.iter_unpack("<QQ", raw[: len(raw) // 16 * 16]))
    return (pairs[_AT_HWCAP], pairs.get(_AT_HWCAP2, 0)) if _AT_HWCAP in pairs else None


def read_cpu(
    root: Path = Path("/"), machine: str | None = None, env: Mapping[str, str] | None = None
) -> Cpu:
    """This CPU's architecture, model and features, and whether it is qemu-user's."""
    machine = machine or platform.machine()
    env = os.environ if env is None else env
    info_arch, model, flags = _cpuinfo(root)
    why = []
    if env.get("QEMU_CPU"):
        why.append(f"QEMU_CPU={env['QEMU_CPU']}")
    if info_arch and info_arch != _norm(machine):
        why.append(f"/proc/cpuinfo is {info_arch}'s, the machine {machine}")
    features, source = flags, "/proc/cpuinfo"
    caps = _hwcaps(root) if _norm(machine) == "aarch64" else None
    if caps is not None:
        features = {n for b, n in _HWCAP.items() if caps[0] >> b & 1}
        features |= {n for b, n in _HWCAP2.items() if caps[1] >> b & 1}
        source = "HWCAP"
        model = model if not why else env.get("QEMU_CPU", "emulated")
    elif info_arch != _norm(machine):
        features, source = set(), "unknown"
    return Cpu(_norm(machine), model or machine, frozenset(features), source, "; ".join(why))


def _norm(machine: str) -> str:
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine)


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def read_build(package_dir: Path | None = None) -> Build:
    """The installed build's version and, when deploy/build-wheel.sh made it, its target."""
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    folder = package_dir or _package_dir()
    try:
        info = json.loads((folder / BUILD_INFO_NAME).read_text(encoding="utf-8")) if folder else {}
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "cmake_args" not in info:
        return Build(version)
    args = str(info["cmake_args"])
    return Build(version, info.get("board"), args, requirements(args, info))


def requirements(cmake_args: str, info: Mapping[str, object]) -> frozenset[str]:
    """The CPU features a build with these llama.cpp flags needs."""
    args = cmake_args.split()
    if "-DGGML_NATIVE=OFF" not in args:
        native = info.get("native_cpu_features") or []
        return frozenset(set(map(str, native)) & _RELEVANT)  # type: ignore[call-overload]
    for arg in args:
        if arg.startswith("-DGGML_CPU_ARM_ARCH="):
            base, *exts = arg.split("=", 1)[1].split("+")
            need = {"fp", "asimd"} | (_ARM_V81 if base not in ("armv8-a", "armv8") else set())
            for ext in exts:
                need |= _ARM_EXTENSIONS.get(ext, set())
            return frozenset(need)
    on = _options_on(args)
    return frozenset(flag for opt, flag in _X86_OPTIONS.items() if opt in on)


def _options_on(args: list[str]) -> list[str]:
    """-DGGML_AVX2=ON -> AVX2: the llama.cpp options a build turned on."""
    return [a[7:].split("=")[0] for a in args if a.startswith("-DGGML_") and a.endswith("=ON")]


def fitting_board(cpu: Cpu) -> tuple[str, str] | None:
    """The portable build (kind, target) this CPU runs fastest, or None (build natively)."""
    for kind, arch, target, needs in PORTABLE:
        if arch == cpu.arch and needs <= cpu.features:
            return kind, target
    return None


def named(features: set[str] | frozenset[str]) -> str:
    """asimddp (dotprod), fphp (fp16), ...: cpuinfo's names with the ones people know."""
    return ", ".join(f"{f} ({NICKNAMES[f]})" if f in NICKNAMES else f for f in sorted(features))


def pinned_version() -> str:
    """The llama-cpp-python version edgellm pins (pyproject.toml), else the installed one."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for req in importlib.metadata.requires("edgellm") or []:
            name, _, rest = req.partition("==")
            if name.strip().lower() == "llama-cpp-python" and rest:
                return rest.split(";")[0].strip()
    return read_build(Path("/nonexistent")).version.split("+")[0]


def explain(tried: str, cpu: Cpu, build: Build, python: str, pin: str) -> str:
    """The whole refusal: what died, what the build needs and this CPU lacks, the fix."""
    what = [f"llama.cpp crashes on this CPU ({tried})."]
    here = f"{cpu.model}, {cpu.arch}, features from {cpu.source}"
    here += f"; emulated: {cpu.emulated}" if cpu.emulated else ""
    label = f"llama-cpp-python {build.version}"
    if build.requires is None:
        what.append(
            f"This build ({label}) does not say what it needs: it has no "
            f"llama_cpp/{BUILD_INFO_NAME}, so deploy/build-wheel.sh did not make it; "
            f"a build compiled on another machine with GGML_NATIVE=ON needs that machine's CPU."
        )
    else:
        lacks = build.requires - cpu.features
        what.append(
            f"This build ({label}, board {build.board or '?'}, {build.target()}) needs "
            f"{named(build.requires) or 'nothing beyond the base instruction set'}; "
            + (
                f"this CPU ({here}) lacks {named(lacks)}."
                if lacks and cpu.features
                else f"this CPU ({here}) has all of them, so the fault is elsewhere "
                "(a VM that lists features it traps, say)."
            )
        )
    what.append(_fix(cpu, python, pin))
    return " ".join(what)


def _fix(cpu: Cpu, python: str, pin: str) -> str:
    fit = fitting_board(cpu)
    # No portable build fits (an x86 CPU without AVX2, say): one for this very CPU does.
    kind, target = fit or ("x86" if cpu.arch == "x86_64" else "arm64", "GGML_NATIVE=ON")
    label = kind.replace("-", ".")
    pip = (
        f"{python} -m pip install --force-reinstall --no-deps --find-links WHEELS "
        f"'llama-cpp-python=={pin}+{label}'"
    )
    if kind in ("pi5", "pi4"):
        where = (
            f"built once on any x86-64 machine with `deploy/build-wheel.sh --cross {kind}` "
            f"or here with `deploy/build-wheel.sh --board {kind}`"
        )
    elif kind == "x86-portable":
        where = "built once on any x86-64 machine with `deploy/build-wheel.sh --board x86-portable`"
    else:
        where = f"built on this machine with `deploy/build-wheel.sh --board {kind}`"
    return (
        f"The build that fits: {kind} ({target}). Fix: install the {kind} wheel, {where} "
        f'(docs/DEPLOY.md, "Wheels"), from its folder WHEELS: `{pip}`.'
    )
