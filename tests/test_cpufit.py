"""Honest CPU errors: what the build needs, what this CPU lacks, the build that fits, a pinned
fix; and a verdict that qemu-user cannot carry from one emulated CPU to another."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from daemon.engine import cpufit, cpuprobe
from daemon.engine.cpuprobe import CpuUnsupported, Outcome, VerdictCache
from tests import fakesys

PI5 = "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16"
PI4 = "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a"
X86_PORTABLE = (
    "-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    " -DGGML_BMI2=ON"
)
NO_QEMU: dict[str, str] = {}


def package(tmp_path: Path, board: str, cmake_args: str, **extra: object) -> Path:
    """A llama_cpp folder with the edgellm-build.json deploy/wheel_stamp.py writes."""
    info = {"board": board, "cmake_args": cmake_args, **extra}
    fakesys.write(tmp_path / "llama_cpp", cpufit.BUILD_INFO_NAME, json.dumps(info))
    return tmp_path / "llama_cpp"


def pi4_cpu(root: Path) -> cpufit.Cpu:
    fakesys.cpuinfo_arm(root, fakesys.A72_FEATURES)
    return cpufit.read_cpu(root, "aarch64", NO_QEMU)


def test_a_pi4_cpu_has_no_dotprod_and_a_pi5_cpu_has(tmp_path: Path) -> None:
    pi4 = pi4_cpu(tmp_path / "pi4")
    fakesys.cpuinfo_arm(tmp_path / "pi5", fakesys.A76_FEATURES, part="0xd0b")
    pi5 = cpufit.read_cpu(tmp_path / "pi5", "aarch64", NO_QEMU)
    assert "asimddp" not in pi4.features and {"asimddp", "fphp", "asimdhp"} <= pi5.features
    assert (pi4.model, pi4.source, pi4.emulated) == ("0xd08", "/proc/cpuinfo", "")
    assert cpufit.fitting_board(pi4) == ("pi4", "-march=armv8-a")
    assert cpufit.fitting_board(pi5) == ("pi5", "-march=armv8.2-a+dotprod+fp16")


def test_the_requirements_follow_the_build_flags() -> None:
    assert cpufit.requirements(PI5, {}) >= {"asimddp", "fphp", "asimdhp", "atomics"}
    assert cpufit.requirements(PI4, {}) == {"fp", "asimd"}
    assert cpufit.requirements(X86_PORTABLE, {}) == {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}
    # A native build needs what its build machine had, of what llama.cpp uses.
    native = {"native_cpu_features": ["fpu", "avx2", "avx512f", "sse4_2"]}
    assert cpufit.requirements("-DGGML_NATIVE=ON", native) == {"avx2", "avx512f", "sse4_2"}


def test_the_pi5_wheel_on_a_pi4_names_the_lack_the_fit_and_a_pinned_fix(tmp_path: Path) -> None:
    build = cpufit.read_build(package(tmp_path, "pi5", PI5))
    text = cpuprobe.unsupported_text(
        {"on": "signal SIGILL", "off": "signal SIGILL"}, pi4_cpu(tmp_path / "sys"), build
    )
    assert "repack on: signal SIGILL, repack off: signal SIGILL" in text
    assert "board pi5, -march=armv8.2-a+dotprod+fp16" in text
    lacks = text.split("lacks", 1)[1].split(".")[0]
    assert "asimddp (dotprod)" in lacks and "fphp (fp16)" in lacks and "asimd," not in lacks
    assert "The build that fits: pi4 (-march=armv8-a)" in text
    assert "deploy/build-wheel.sh --cross pi4" in text
    pin = cpufit.pinned_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", pin)
    assert f"'llama-cpp-python=={pin}+pi4'" in text
    assert 'GGML_NATIVE=OFF" pip' not in text  # the old unpinned advice


def test_a_pc_without_avx2_is_told_to_build_natively(tmp_path: Path) -> None:
    fakesys.cpuinfo_x86(tmp_path, fakesys.GOLDMONT_FLAGS)
    cpu = cpufit.read_cpu(tmp_path, "x86_64", NO_QEMU)
    build = cpufit.read_build(package(tmp_path / "pkg", "x86-portable", X86_PORTABLE))
    text = cpuprobe.unsupported_text({"on": "signal SIGILL", "off": "signal SIGILL"}, cpu, build)
    lacks = text.split("lacks", 1)[1].split(".")[0]
    assert "avx2" in lacks and "sse4_2" not in lacks
    assert "The build that fits: x86 (GGML_NATIVE=ON)" in text
    assert "deploy/build-wheel.sh --board x86`" in text
    fakesys.cpuinfo_x86(tmp_path, fakesys.HASWELL_FLAGS)
    assert cpufit.fitting_board(cpufit.read_cpu(tmp_path, "x86_64", NO_QEMU))[0] == "x86-portable"


def test_a_build_without_its_record_says_so(tmp_path: Path) -> None:
    build = cpufit.read_build(tmp_path / "no-such-package")
    assert build.requires is None
    text = cpuprobe.unsupported_text({"off": "signal SIGILL"}, pi4_cpu(tmp_path), build)
    assert "deploy/build-wheel.sh did not make it" in text
    assert "The build that fits: pi4" in text


def test_a_crash_with_nothing_lacking_blames_something_else(tmp_path: Path) -> None:
    fakesys.cpuinfo_arm(tmp_path, fakesys.A76_FEATURES)
    cpu = cpufit.read_cpu(tmp_path, "aarch64", NO_QEMU)
    build = cpufit.read_build(package(tmp_path, "pi5", PI5))
    assert "has all of them" in cpuprobe.unsupported_text({"on": "signal SIGILL"}, cpu, build)


# -- qemu-user: the host's /proc/cpuinfo, the emulated CPU's HWCAP -------------------------------


def qemu(root: Path, features: str) -> cpufit.Cpu:
    """An arm64 process under qemu-user on an x86 host, emulating a CPU with features."""
    fakesys.cpuinfo_x86(root, fakesys.HASWELL_FLAGS, model="AMD EPYC 7B13")
    fakesys.auxv(root, features)
    name = "cortex-a76" if "asimddp" in features else "cortex-a72"
    return cpufit.read_cpu(root, "aarch64", {"QEMU_CPU": name})


def test_under_qemu_the_features_are_the_emulated_cpus(tmp_path: Path) -> None:
    a72 = qemu(tmp_path / "a72", fakesys.A72_FEATURES)
    a76 = qemu(tmp_path / "a76", fakesys.A76_FEATURES)
    assert a72.source == "HWCAP" and a72.model == "cortex-a72"
    assert "QEMU_CPU=cortex-a72" in a72.emulated and "x86_64's" in a72.emulated
    assert "asimddp" in a76.features and "asimddp" not in a72.features
    assert "avx2" not in a72.features  # never the host's flags
    assert cpufit.fitting_board(a72)[0] == "pi4" and cpufit.fitting_board(a76)[0] == "pi5"


def test_a_cpuinfo_of_another_machine_alone_marks_emulation(tmp_path: Path) -> None:
    fakesys.cpuinfo_x86(tmp_path, fakesys.HASWELL_FLAGS)
    cpu = cpufit.read_cpu(tmp_path, "aarch64", NO_QEMU)  # no auxv readable: features unknown
    assert cpu.emulated and cpu.source == "unknown" and not cpu.features


def test_a_verdict_is_never_reused_for_another_emulated_cpu(tmp_path: Path) -> None:
    model = fakesys.write(tmp_path, "m.gguf", b"GGUF" + b"\0" * 64)
    a72 = qemu(tmp_path / "a72", fakesys.A72_FEATURES)
    a76 = qemu(tmp_path / "a76", fakesys.A76_FEATURES)
    # Even a CPU model qemu lists with the same features is another key.
    a76_named_otherwise = cpufit.Cpu(a76.arch, "max", a76.features, a76.source, "QEMU_CPU=max")
    keys = {cpuprobe.identity(model, c) for c in (a72, a76, a76_named_otherwise)}
    assert len(keys) == 3
    host = cpufit.read_cpu(tmp_path / "a72", "x86_64", NO_QEMU)
    assert cpuprobe.identity(model, host) not in keys


def test_qemu_cpu_in_the_environment_changes_the_probe_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fakesys.write(tmp_path, "m.gguf", b"GGUF" + b"\0" * 64)
    monkeypatch.delenv("QEMU_CPU", raising=False)
    plain = cpuprobe.identity(model)
    monkeypatch.setenv("QEMU_CPU", "cortex-a72")
    a72 = cpuprobe.identity(model)
    monkeypatch.setenv("QEMU_CPU", "cortex-a76")
    assert len({plain, a72, cpuprobe.identity(model)}) == 3


def test_a_remembered_refusal_still_explains_itself(tmp_path: Path) -> None:
    model = fakesys.write(tmp_path, "m.gguf", b"GGUF" + b"\0" * 64)
    cache = VerdictCache(tmp_path / "state" / cpuprobe.CACHE_NAME)

    def dies(_path: Path, _repack: bool) -> Outcome:
        return Outcome(False, "signal SIGILL", 0.1)

    for _ in range(2):  # the second start reads the cached verdict
        with pytest.raises(CpuUnsupported) as err:
            cpuprobe.decide("auto", model, cache, probe=dies)
        assert "The build that fits" in str(err.value) and "--force-reinstall" in str(err.value)
