"""Wheels for the boards: build-wheel.sh --cross (dry runs), the stamp that says what a wheel was
built for, and install.sh / bootstrap.sh taking the right wheel or refusing a wrong one. Nothing
here compiles llama.cpp (deploy/arm-check.sh does, under emulation)."""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import http.server
import io
import json
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import fakesys
from tests.helpers import REPO
from tests.test_board_builds import (
    A72,
    A76,
    BUILD_WHEEL,
    INSTALL,
    clean_env,
    pinned_llama,
    run,
)

STAMP = REPO / "deploy" / "wheel_stamp.py"
TOOLCHAIN = REPO / "deploy" / "toolchains" / "aarch64-linux-gnu.cmake"
VERSION = pinned_llama().split("==")[1]


def cross_plan(tmp_path: Path, kind: str, expect_rc: int = 0, machine: str = "x86_64") -> str:
    result = run(
        [BUILD_WHEEL, "--dry-run", "--cross", kind, "--out", tmp_path / "w"],
        clean_env(EDGELLM_MACHINE=machine),
        expect_rc,
    )
    return result.stdout + result.stderr


@pytest.mark.parametrize(("kind", "flags"), [("pi5", A76), ("pi4", A72), ("arm64-portable", A72)])
def test_a_cross_build_uses_the_toolchain_and_the_boards_flags(
    tmp_path: Path, kind: str, flags: str
) -> None:
    plan = cross_plan(tmp_path, kind)
    (line,) = [ln for ln in plan.splitlines() if "pip wheel" in ln]
    assert line.startswith(f"+ env CMAKE_ARGS={flags} -DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN} ")
    assert line.endswith(pinned_llama())
    assert "-DGGML_NATIVE=ON" not in line  # never the build machine's CPU
    (stamp,) = [ln for ln in plan.splitlines() if "wheel_stamp.py" in ln]
    assert f"--board {kind} --plat linux_aarch64 --out {tmp_path}/w/{kind}" in stamp
    assert ".sha256" in plan and "deploy/install.sh --wheels" in plan
    assert not (tmp_path / "w").exists()


def test_cross_refuses_what_it_cannot_build(tmp_path: Path) -> None:
    assert "--cross builds" in cross_plan(tmp_path, "jetson-orin", expect_rc=2)
    assert "--cross builds" in cross_plan(tmp_path, "x86-portable", expect_rc=2)
    assert "use --board pi4" in cross_plan(tmp_path, "pi4", expect_rc=2, machine="aarch64")
    bad = run(
        [BUILD_WHEEL, "--dry-run", "--cross", "pi4", "--sdist", tmp_path / "llama.tar.gz"],
        clean_env(EDGELLM_MACHINE="x86_64"),
        expect_rc=2,
    )
    assert "is not the pinned" in bad.stderr


def test_the_sdist_given_is_what_pip_builds(tmp_path: Path) -> None:
    sdist = tmp_path / f"llama_cpp_python-{VERSION}.tar.gz"
    sdist.write_bytes(b"")
    plan = run(
        [BUILD_WHEEL, "--dry-run", "--cross", "pi4", "--sdist", sdist],
        clean_env(EDGELLM_MACHINE="x86_64"),
    ).stdout
    (line,) = [ln for ln in plan.splitlines() if "pip wheel" in ln]
    assert line.endswith(f" {sdist}")


# -- the stamp ------------------------------------------------------------------------------------


def elf(machine: int) -> bytes:
    """The first bytes of a 64-bit little-endian ELF shared object for machine."""
    return b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x03\x00" + machine.to_bytes(2, "little")


def pip_wheel(tmp_path: Path, machine: int = 0xB7) -> Path:
    """What pip wheel makes on an x86-64 host: tagged linux_x86_64, whatever is inside."""
    path = tmp_path / f"llama_cpp_python-{VERSION}-py3-none-linux_x86_64.whl"
    info = f"llama_cpp_python-{VERSION}.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("llama_cpp/__init__.py", f'__version__ = "{VERSION}"\n')
        whl.writestr("llama_cpp/lib/libggml-cpu.so", elf(machine) + b"\0" * 64)
        whl.writestr(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: {VERSION}\n",
        )
        whl.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: py3-none-linux_x86_64\n",
        )
        whl.writestr(f"{info}/RECORD", "")
    return path


def stamp(tmp_path: Path, raw: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STAMP), str(raw), "--out", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_stamp_names_the_board_in_the_version_tag_and_inside(tmp_path: Path) -> None:
    done = stamp(
        tmp_path,
        pip_wheel(tmp_path),
        "--board",
        "pi5",
        "--cmake-args",
        A76,
        "--plat",
        "linux_aarch64",
    )
    assert done.returncode == 0, done.stderr
    wheel = Path(done.stdout.strip())
    assert wheel.name == f"llama_cpp_python-{VERSION}+pi5-py3-none-linux_aarch64.whl"
    info = f"llama_cpp_python-{VERSION}+pi5.dist-info"
    with zipfile.ZipFile(wheel) as whl:
        assert f"Version: {VERSION}+pi5" in whl.read(f"{info}/METADATA").decode()
        assert "Tag: py3-none-linux_aarch64" in whl.read(f"{info}/WHEEL").decode()
        build = json.loads(whl.read("llama_cpp/edgellm-build.json"))
        assert (build["board"], build["cmake_args"]) == ("pi5", A76)
        assert "native_cpu_features" not in build
        # RECORD lists every file with its hash, as pip and installers check it.
        rows = list(csv.reader(io.StringIO(whl.read(f"{info}/RECORD").decode())))
        assert {r[0] for r in rows} == set(whl.namelist())
        for name, digest, _size in rows:
            if digest:
                raw = hashlib.sha256(whl.read(name)).digest()
                assert digest == "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_the_stamp_refuses_libraries_of_another_cpu(tmp_path: Path) -> None:
    done = stamp(
        tmp_path, pip_wheel(tmp_path, machine=0x3E), "--board", "pi4", "--plat", "linux_aarch64"
    )
    assert done.returncode != 0 and "is x86_64, not aarch64" in done.stderr


def test_a_native_stamp_records_the_build_cpu(tmp_path: Path) -> None:
    raw = pip_wheel(tmp_path, machine=0x3E)
    args = ["--board", "x86", "--cmake-args=-DGGML_NATIVE=ON", "--cpu-features=fpu avx2"]
    wheel = Path(stamp(tmp_path, raw, *args).stdout.strip())
    with zipfile.ZipFile(wheel) as whl:
        assert json.loads(whl.read("llama_cpp/edgellm-build.json"))["native_cpu_features"] == [
            "avx2",
            "fpu",
        ]
    label = stamp(tmp_path, raw, "--board", "x86-portable").stdout.strip()
    assert Path(label).name.startswith(f"llama_cpp_python-{VERSION}+x86.portable-")


# -- installing from wheels -----------------------------------------------------------------------


def wheels(folder: Path, *kinds: str, plat: str = "linux_aarch64") -> Path:
    for kind in kinds:
        label = kind.replace("-", ".")
        fakesys.write(folder / kind, f"llama_cpp_python-{VERSION}+{label}-py3-none-{plat}.whl", b"")
    return folder


def install_plan(tmp_path: Path, tree: Path, folder: Path | str, expect_rc: int = 0) -> str:
    result = run(
        [INSTALL, "--dry-run", "--no-model", "--prefix", tmp_path / "root", "--wheels", folder],
        clean_env(EDGELLM_SYSROOT=str(tree), EDGELLM_MACHINE="aarch64"),
        expect_rc,
    )
    return result.stdout + result.stderr


def test_install_takes_the_boards_own_wheel_and_compiles_nothing(tmp_path: Path) -> None:
    folder = wheels(tmp_path / "w", "pi4", "pi5")
    plan = install_plan(tmp_path, fakesys.pi5(tmp_path / "pi5"), folder)
    (line,) = [ln for ln in plan.splitlines() if "pip install" in ln]
    assert f"{folder}/pi5/llama_cpp_python-{VERSION}+pi5-py3-none-linux_aarch64.whl" in line
    assert "nothing to compile" in plan


def test_a_pi4_takes_a_baseline_wheel_and_refuses_the_pi5_one(tmp_path: Path) -> None:
    pi4 = fakesys.pi4(tmp_path / "pi4")
    plan = install_plan(tmp_path, pi4, wheels(tmp_path / "both", "pi5", "arm64-portable"))
    assert "+arm64.portable-py3-none-linux_aarch64.whl" in plan
    refused = install_plan(tmp_path, pi4, wheels(tmp_path / "only5", "pi5"), expect_rc=3)
    assert (
        f"the one that fits is llama_cpp_python-{VERSION}+pi4-py3-none-linux_aarch64.whl" in refused
    )
    assert "deploy/build-wheel.sh --cross pi4" in refused
    assert "pip install" not in refused  # refused before anything is installed


def test_a_wheel_for_another_machine_or_version_is_refused(tmp_path: Path) -> None:
    pi4 = fakesys.pi4(tmp_path / "pi4")
    pc_wheel = wheels(tmp_path / "pc", "pi4", plat="linux_x86_64")
    assert "(linux_aarch64)" in install_plan(tmp_path, pi4, pc_wheel, expect_rc=3)
    old = tmp_path / "old"
    fakesys.write(old, "llama_cpp_python-0.2.90+pi4-py3-none-linux_aarch64.whl", b"")
    assert "found: llama_cpp_python-0.2.90" in install_plan(tmp_path, pi4, old, expect_rc=3)


@pytest.fixture
def wheel_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on loopback (a folder listing, as any web server's)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_wheels_from_a_url_are_fetched_checked_and_picked(
    tmp_path: Path, wheel_server: tuple[Path, str]
) -> None:
    folder, url = wheel_server
    for kind in ("pi4", "pi5"):
        name = f"llama_cpp_python-{VERSION}+{kind}-py3-none-linux_aarch64.whl"
        (folder / name).write_bytes(kind.encode() * 1000)
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        (folder / f"{name}.sha256").write_text(f"{digest}  {name}\n")
    pi4 = fakesys.pi4(tmp_path / "pi4")
    plan = install_plan(tmp_path, pi4, url)
    (line,) = [ln for ln in plan.splitlines() if "pip install" in ln]
    assert f"llama_cpp_python-{VERSION}+pi4-py3-none-linux_aarch64.whl" in line
    assert "edgellm-wheels." in line, "installed from the fetched copy"
    # A wheel that does not match its checksum is refused before anything is installed.
    (folder / f"llama_cpp_python-{VERSION}+pi4-py3-none-linux_aarch64.whl").write_bytes(b"bad")
    refused = install_plan(tmp_path, pi4, url, expect_rc=3)
    assert "does not match its .sha256: refused" in refused and "pip install" not in refused


def test_bootstrap_refuses_a_wrong_wheel_before_apt(tmp_path: Path) -> None:
    result = run(
        [REPO / "deploy" / "bootstrap.sh", "--wheels", wheels(tmp_path / "w", "pi5")],
        clean_env(
            EDGELLM_SYSROOT=str(fakesys.pi4(tmp_path / "pi4")),
            EDGELLM_MACHINE="aarch64",
            EDGELLM_VENV=str(tmp_path / "venv"),
        ),
        expect_rc=3,
    )
    assert "+pi4-py3-none-linux_aarch64.whl" in result.stderr
    assert "installing system packages" not in result.stdout
    assert not (tmp_path / "venv").exists()


def test_arm_check_says_what_it_runs_and_refuses_an_unknown_step() -> None:
    arm_check = REPO / "deploy" / "arm-check.sh"
    assert "--steps LIST" in run([arm_check, "--help"], clean_env()).stdout
    bad = run([arm_check, "--steps", "wheels frob"], clean_env(), expect_rc=2)
    assert "unknown step frob" in bad.stderr
