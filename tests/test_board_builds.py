"""deploy/boards.sh (which board, which llama.cpp flags) and deploy/build-wheel.sh, run against fake
device trees; nothing here compiles llama.cpp."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from daemon.governor import boards as governor_boards
from tests import fakesys
from tests.helpers import REPO

BOARDS = REPO / "deploy" / "boards.sh"
INSTALL = REPO / "deploy" / "install.sh"
BUILD_WHEEL = REPO / "deploy" / "build-wheel.sh"

A76 = "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16"
A72 = "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a"
# The table in docs/DEPLOY.md ("Builds for the boards"): a change to either shows up here.
EXPECTED_FLAGS = {
    "pi5": A76,
    "pi4": A72,
    "pi3": A72,
    "jetson-orin": f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=87 {A76}",
    "jetson-xavier": "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=72 -DGGML_NATIVE=OFF"
    " -DGGML_CPU_ARM_ARCH=armv8.2-a+fp16",
    "jetson-nano": f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=53 {A72}",
    "jetson": "-DGGML_CUDA=on",
    "x86-portable": "-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON"
    " -DGGML_F16C=ON -DGGML_BMI2=ON",
    "x86": "-DGGML_NATIVE=ON",
    "arm64": "-DGGML_NATIVE=ON",
    "arm64-portable": A72,
    "native": "-DGGML_NATIVE=ON",
}


# What deploy/boards.sh and the scripts read from the environment (QEMU_CPU: arm-check.sh runs
# these tests under qemu-user, where it is set).
_READ = {"CMAKE_ARGS", "CUDACXX", "EDGELLM_BOARD", "EDGELLM_SYSROOT", "EDGELLM_MACHINE", "QEMU_CPU"}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the variables the scripts read, plus extra."""
    env = {k: v for k, v in os.environ.items() if k not in _READ}
    return {**env, **extra}


def run(
    args: list[str | Path], env: dict[str, str], expect_rc: int = 0
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == expect_rc, f"{args} exited {result.returncode}:\n{result.stderr}"
    return result


def boards(snippet: str, expect_rc: int = 0, **env: str) -> str:
    """Source deploy/boards.sh in bash and run snippet; its stdout, stripped."""
    script = f'set -euo pipefail; source "{BOARDS}"; {snippet}'
    return run(["bash", "-c", script], clean_env(**env), expect_rc).stdout.strip()


def detect(root: Path, machine: str) -> str:
    return boards("board_detect", EDGELLM_SYSROOT=str(root), EDGELLM_MACHINE=machine)


# -- detection -------------------------------------------------------------------------------------


def test_fake_trees_are_detected(tmp_path: Path) -> None:
    assert detect(fakesys.pi5(tmp_path / "pi5"), "aarch64") == "pi5"
    assert detect(fakesys.pi4(tmp_path / "pi4"), "aarch64") == "pi4"
    assert detect(fakesys.jetson_orin(tmp_path / "orin"), "aarch64") == "jetson-orin"
    assert detect(fakesys.x86_bare(tmp_path / "pc"), "x86_64") == "x86"
    assert detect(tmp_path / "nothing-at-all", "x86_64") == "x86"


@pytest.mark.parametrize(
    ("model", "machine", "kind"),
    [
        (b"Raspberry Pi 5 Model B Rev 1.0\x00", "aarch64", "pi5"),
        (b"Raspberry Pi 500 Rev 1.0\x00", "aarch64", "pi5"),
        (b"Raspberry Pi Compute Module 5 Rev 1.0\x00", "aarch64", "pi5"),
        (b"Raspberry Pi 4 Model B Rev 1.4\x00", "aarch64", "pi4"),
        (b"Raspberry Pi Compute Module 4 Rev 1.0\x00", "aarch64", "pi4"),
        (b"Raspberry Pi 3 Model B Plus Rev 1.3\x00", "aarch64", "pi3"),
        (b"Raspberry Pi Zero 2 W Rev 1.0\x00", "aarch64", "pi3"),
        # 32-bit Raspberry Pi OS: the Pi kinds are 64-bit builds, so llama.cpp's own detection.
        (b"Raspberry Pi 4 Model B Rev 1.4\x00", "armv7l", "native"),
        # An arm64 board this list does not know, and a Pi generation it does not know yet.
        (b"Radxa ROCK 5B\x00", "aarch64", "arm64"),
        (b"Raspberry Pi 6 Model B Rev 1.0\x00", "aarch64", "arm64"),
        (b"StarFive VisionFive 2 v1.3B\x00", "riscv64", "native"),
    ],
)
def test_device_tree_model_picks_the_kind(
    tmp_path: Path, model: bytes, machine: str, kind: str
) -> None:
    fakesys.write(tmp_path, "proc/device-tree/model", model)
    assert detect(tmp_path, machine) == kind


@pytest.mark.parametrize(
    ("compatible", "model", "kind"),
    [
        (
            b"nvidia,p3768-0000+p3767-0005\x00nvidia,p3767-0005\x00nvidia,tegra234\x00",
            b"NVIDIA Jetson Orin Nano Developer Kit\x00",
            "jetson-orin",
        ),
        (
            b"nvidia,p3737-0000+p3701-0000\x00nvidia,p3701-0000\x00nvidia,tegra234\x00",
            b"Jetson AGX Orin\x00",
            "jetson-orin",
        ),
        (
            b"nvidia,p3509-0000+p3668-0001\x00nvidia,p3668-0001\x00nvidia,tegra194\x00",
            b"NVIDIA Jetson Xavier NX Developer Kit\x00",
            "jetson-xavier",
        ),
        (
            b"nvidia,p3449-0000-b00+p3448-0002-b00\x00nvidia,jetson-nano\x00nvidia,tegra210\x00",
            b"NVIDIA Jetson Nano Developer Kit\x00",
            "jetson-nano",
        ),
        (
            b"nvidia,p3636-0001\x00nvidia,tegra186\x00",
            b"NVIDIA Jetson TX2 NX Developer Kit\x00",
            "jetson",
        ),
    ],
)
def test_the_tegra_soc_picks_the_jetson_kind(
    tmp_path: Path, compatible: bytes, model: bytes, kind: str
) -> None:
    """The compatible string names the SoC even without /etc/nv_tegra_release (a bare L4T)."""
    fakesys.write(tmp_path, "proc/device-tree/compatible", compatible)
    fakesys.write(tmp_path, "proc/device-tree/model", model)
    assert detect(tmp_path, "aarch64") == kind


def test_a_tegra_release_file_alone_means_a_jetson(tmp_path: Path) -> None:
    fakesys.write(tmp_path, "etc/nv_tegra_release", "# R35 (release), REVISION: 4.1\n")
    assert detect(tmp_path, "aarch64") == "jetson"


@pytest.mark.parametrize(
    ("model", "kind", "profile"),
    [
        (b"Raspberry Pi 5 Model B Rev 1.0\x00", "pi5", "raspberry-pi-5"),
        (b"Raspberry Pi 4 Model B Rev 1.4\x00", "pi4", "raspberry-pi-4"),
        (b"NVIDIA Jetson Orin Nano Developer Kit\x00", "jetson-orin", "jetson-orin"),
        (b"Radxa ROCK 5B\x00", "arm64", "generic"),
    ],
)
def test_the_shell_and_the_governor_agree_on_the_board(
    tmp_path: Path, model: bytes, kind: str, profile: str
) -> None:
    """install.sh builds for the board whose thermal profile the daemon then applies."""
    fakesys.write(tmp_path, "proc/device-tree/model", model)
    assert detect(tmp_path, "aarch64") == kind
    assert governor_boards.detect(tmp_path).name == profile


# -- flags -----------------------------------------------------------------------------------------


def test_each_kind_has_its_flags(tmp_path: Path) -> None:
    kinds = boards('echo "$BOARD_KINDS"').split()
    assert sorted(kinds) == sorted(EXPECTED_FLAGS)
    # On a real Arm board (not emulated: arm64's flags differ there, tested below).
    board = fakesys.cpuinfo_arm(tmp_path / "board", fakesys.A72_FEATURES).parent.parent
    env = {"EDGELLM_MACHINE": "aarch64", "EDGELLM_SYSROOT": str(board)}
    for kind, flags in EXPECTED_FLAGS.items():
        assert boards(f"board_cmake_args {kind}", **env) == flags, kind


def test_cpus_without_dotprod_never_get_it() -> None:
    """Cortex-A72/A53/A57 and Carmel lack SDOT/UDOT: a +dotprod build dies there of SIGILL."""
    for kind in ("pi4", "pi3", "jetson-nano", "jetson-xavier"):
        assert "dotprod" not in boards(f"board_cmake_args {kind}"), kind


def test_an_arm_board_without_a_device_tree_builds_native_unless_emulated(
    tmp_path: Path,
) -> None:
    def flags(root: Path, **env: str) -> str:
        return boards("board_cmake_args arm64", EDGELLM_MACHINE="aarch64",
                      EDGELLM_SYSROOT=str(root), **env)  # fmt: skip

    board = fakesys.cpuinfo_arm(tmp_path / "board", fakesys.A72_FEATURES).parent.parent
    assert flags(board) == "-DGGML_NATIVE=ON"
    # qemu-user: QEMU_CPU set, or the host's x86 /proc/cpuinfo seen from the Arm userland.
    a72 = "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a"
    assert flags(board, QEMU_CPU="cortex-a76") == a72
    host = fakesys.cpuinfo_x86(tmp_path / "host", fakesys.HASWELL_FLAGS).parent.parent
    assert flags(host) == a72


def test_an_unknown_kind_is_refused() -> None:
    assert boards("board_cmake_args pi9", expect_rc=2) == ""
    assert boards("board_resolve", expect_rc=2, EDGELLM_BOARD="pi9") == ""


def test_the_older_board_names_still_work() -> None:
    assert boards("board_resolve", EDGELLM_BOARD="cpu") == "native"
    assert boards("board_resolve", EDGELLM_BOARD="pi") == "native"
    assert boards("board_resolve", EDGELLM_BOARD="jetson") == "jetson"


def test_build_env_is_the_boards_unless_cmake_args_is_set() -> None:
    assert boards("board_build_env pi4") == f"CMAKE_ARGS={A72}"
    assert boards("board_build_env pi4", CMAKE_ARGS="-DGGML_VULKAN=on") == (
        "CMAKE_ARGS=-DGGML_VULKAN=on"
    )
    # Set but empty is the user's choice too: llama.cpp's defaults.
    assert boards("board_build_env pi4", CMAKE_ARGS="") == "CMAKE_ARGS="
    jetson = boards("board_build_env jetson-orin", PATH="/usr/bin:/bin").splitlines()
    assert jetson == [
        f"CMAKE_ARGS={EXPECTED_FLAGS['jetson-orin']}",
        "CUDACXX=/usr/local/cuda/bin/nvcc",
        "PATH=/usr/local/cuda/bin:/usr/bin:/bin",
    ]
    own_nvcc = boards("board_build_env jetson", CUDACXX="/opt/cuda-12.6/bin/nvcc")
    assert "CUDACXX=/opt/cuda-12.6/bin/nvcc" in own_nvcc.splitlines()


# -- install.sh ------------------------------------------------------------------------------------


def install_plan(tmp_path: Path, sysroot: Path, machine: str, **env: str) -> str:
    result = run(
        [INSTALL, "--dry-run", "--no-model", "--prefix", tmp_path / "root"],
        clean_env(EDGELLM_SYSROOT=str(sysroot), EDGELLM_MACHINE=machine, **env),
    )
    assert not (tmp_path / "root").exists()
    return result.stdout


def pip_install_line(plan: str) -> str:
    (line,) = [ln for ln in plan.splitlines() if ln.startswith("+ env ") and "pip install" in ln]
    return line


def test_install_on_a_pi5_builds_with_its_flags(tmp_path: Path) -> None:
    plan = install_plan(tmp_path, fakesys.pi5(tmp_path / "pi5"), "aarch64")
    assert f"board: pi5 (Raspberry Pi 5 Model B Rev 1.0); llama.cpp CMAKE_ARGS={A76}" in plan
    assert pip_install_line(plan).startswith(f"+ env CMAKE_ARGS={A76} ")
    assert "jetson.conf" not in plan


def test_install_on_an_orin_builds_with_cuda_for_sm87(tmp_path: Path) -> None:
    plan = install_plan(tmp_path, fakesys.jetson_orin(tmp_path / "orin"), "aarch64")
    line = pip_install_line(plan)
    assert f"CMAKE_ARGS={EXPECTED_FLAGS['jetson-orin']} CUDACXX=/usr/local/cuda/bin/nvcc" in line
    assert "edgellm.service.d/jetson.conf" in plan


def test_install_keeps_the_users_cmake_args(tmp_path: Path) -> None:
    plan = install_plan(
        tmp_path, fakesys.pi4(tmp_path / "pi4"), "aarch64", CMAKE_ARGS="-DGGML_BLAS=ON"
    )
    assert "board: pi4" in plan and "CMAKE_ARGS=-DGGML_BLAS=ON (from the environment)" in plan
    assert pip_install_line(plan).startswith("+ env CMAKE_ARGS=-DGGML_BLAS=ON ")
    assert "GGML_CPU_ARM_ARCH" not in plan


def test_install_refuses_an_unknown_board(tmp_path: Path) -> None:
    result = run(
        [INSTALL, "--dry-run", "--prefix", tmp_path], clean_env(EDGELLM_BOARD="pi9"), expect_rc=2
    )
    assert "EDGELLM_BOARD must be one of" in result.stderr


# -- build-wheel.sh --------------------------------------------------------------------------------


def pinned_llama() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.startswith("llama-cpp-python")]
    return spec


@pytest.mark.parametrize("kind", ["pi5", "pi4", "jetson-orin", "x86-portable", "native"])
def test_build_wheel_dry_run_prints_the_pip_wheel_command(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "wheels"
    plan = run(
        [BUILD_WHEEL, "--dry-run", "--board", kind, "--out", out, "--python", "/usr/bin/python3"],
        clean_env(),
    ).stdout
    (line,) = [ln for ln in plan.splitlines() if "pip wheel" in ln]
    assert line.startswith(f"+ env CMAKE_ARGS={EXPECTED_FLAGS[kind]} ")
    assert line.endswith(
        "/usr/bin/python3 -m pip wheel --no-deps --no-binary llama-cpp-python --no-cache-dir"
        f" --disable-pip-version-check -w /tmp/BUILD-DIR {pinned_llama()}"
    )
    assert ("CUDACXX=/usr/local/cuda/bin/nvcc" in line) == kind.startswith("jetson")
    # pip's wheel is stamped with the kind into OUT/KIND, with its checksum next to it.
    (stamp,) = [ln for ln in plan.splitlines() if "wheel_stamp.py" in ln]
    assert f"--board {kind} --plat as-built --out {out}/{kind}" in stamp
    assert "deploy/install.sh --wheels" in plan
    assert not out.exists()


def test_build_wheel_defaults_to_this_board_and_a_portable_pc_wheel(tmp_path: Path) -> None:
    def plan(sysroot: Path, machine: str, **env: str) -> str:
        return run(
            [BUILD_WHEEL, "--dry-run", "--out", tmp_path / "w"],
            clean_env(EDGELLM_SYSROOT=str(sysroot), EDGELLM_MACHINE=machine, **env),
        ).stdout

    assert f"--out {tmp_path}/w/pi5\n" in plan(fakesys.pi5(tmp_path / "pi5"), "aarch64")
    pc = plan(fakesys.x86_bare(tmp_path / "pc"), "x86_64")
    assert f"--out {tmp_path}/w/x86-portable\n" in pc and "-DGGML_AVX2=ON" in pc
    # The user's flags win here as well; the folder is still named by the board.
    own = plan(fakesys.pi4(tmp_path / "pi4"), "aarch64", CMAKE_ARGS="-DGGML_NATIVE=ON")
    assert "+ env CMAKE_ARGS=-DGGML_NATIVE=ON " in own and f"--out {tmp_path}/w/pi4\n" in own


def test_build_wheel_refuses_bad_arguments(tmp_path: Path) -> None:
    bad = run([BUILD_WHEEL, "--board", "pi9", "--dry-run"], clean_env(), expect_rc=2)
    assert "--board must be one of" in bad.stderr
    assert "unknown option" in run([BUILD_WHEEL, "--frob"], clean_env(), expect_rc=2).stderr
    assert "--board KIND" in run([BUILD_WHEEL, "--help"], clean_env()).stdout
