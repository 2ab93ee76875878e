"""The systemd unit and its Jetson drop-in: verified and scored by systemd-analyze."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.config import LimitsConfig
from tests.helpers import REPO

UNIT = REPO / "systemd" / "edgellm.service"
JETSON = REPO / "systemd" / "edgellm-jetson.conf"
INSTALL = REPO / "deploy" / "install.sh"
MAX_EXPOSURE = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def directives(*paths: Path) -> dict[str, list[str]]:
    """Every Key=value of unit files, in order; a key may repeat (systemd adds them up)."""
    out: dict[str, list[str]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")):
                continue
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def runnable_copy(tmp_path: Path, with_jetson: bool = False, extra: str = "") -> Path:
    """The unit in tmp_path, ExecStart pointing at an executable that exists here.

    `systemd-analyze verify` checks that the ExecStart binary exists, and /opt/edgellm is not
    installed on a test machine; everything else is the shipped text.
    """
    exe = tmp_path / "edgellm"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    text = UNIT.read_text()
    shipped = "ExecStart=/opt/edgellm/venv/bin/edgellm "
    assert shipped in text
    unit = tmp_path / "edgellm.service"
    unit.write_text(text.replace(shipped, f"ExecStart={exe} ") + extra)
    if with_jetson:
        dropins = tmp_path / "edgellm.service.d"
        dropins.mkdir()
        shutil.copy(JETSON, dropins / "jetson.conf")
    return unit


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def exposure(unit: Path) -> float:
    """The overall exposure level from `systemd-analyze security --offline=yes`."""
    result = analyze("security", "--offline=yes", "--no-pager", unit.name, cwd=unit.parent)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize("with_jetson", [False, True], ids=["unit", "unit+jetson"])
def test_verify_is_clean(tmp_path: Path, with_jetson: bool) -> None:
    unit = runnable_copy(tmp_path, with_jetson)
    result = analyze("verify", unit.name, cwd=tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_verify_would_notice_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported."""
    unit = runnable_copy(tmp_path, extra="ProtectSytem=strict\n")
    result = analyze("verify", unit.name, cwd=tmp_path)
    assert "ProtectSytem" in result.stdout + result.stderr


@needs_analyze
@pytest.mark.parametrize("with_jetson", [False, True], ids=["unit", "unit+jetson"])
def test_exposure_at_most_2(tmp_path: Path, with_jetson: bool) -> None:
    assert exposure(runnable_copy(tmp_path, with_jetson)) <= MAX_EXPOSURE


@needs_analyze
def test_exposure_would_notice_a_weaker_unit(tmp_path: Path) -> None:
    """The score is read, not assumed: dropping the user and the sandbox raises it past 2."""
    unit = runnable_copy(tmp_path)
    weak = [
        line
        for line in unit.read_text().splitlines()
        if not line.startswith(("User=", "Protect", "Private", "SystemCall", "Capability"))
    ]
    unit.write_text("\n".join(weak) + "\n")
    assert exposure(unit) > MAX_EXPOSURE


def test_notify_watchdog_and_restart() -> None:
    d = directives(UNIT)
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["30"]
    assert d["ExecStart"] == ["/opt/edgellm/venv/bin/edgellm serve -c /etc/edgellm/config.yaml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"]
    # Exits a restart cannot fix stop the loop; a failed engine (6) is restarted.
    from daemon.service import EXIT_CONFIG, EXIT_CPU, EXIT_ENGINE, EXIT_MQTT

    prevented = d["RestartPreventExitStatus"][0].split()
    assert {str(EXIT_CONFIG), str(EXIT_MQTT), str(EXIT_CPU)} <= set(prevented)
    assert str(EXIT_ENGINE) not in prevented


def test_stop_timeout_covers_the_shutdown_grace() -> None:
    grace = LimitsConfig().shutdown_grace_s
    (stop,) = directives(UNIT)["TimeoutStopSec"]
    assert float(stop) >= grace + 10


def test_ordering_after_network_and_broker() -> None:
    d = directives(UNIT)
    after = " ".join(d["After"]).split()
    assert {"network-online.target", "mosquitto.service"} <= set(after)
    assert "network-online.target" in " ".join(d["Wants"]).split()


def test_hardening_directives() -> None:
    d = directives(UNIT)
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictNamespaces": "yes",
        "SystemCallArchitectures": "native",
        "ProtectProc": "invisible",
        "StateDirectory": "edgellm",
        "CacheDirectory": "edgellm",
        "ConfigurationDirectory": "edgellm",
        "UMask": "0077",
    }
    assert {k: d.get(k, [None])[0] for k in expected} == expected
    assert d["SystemCallFilter"][0] == "@system-service"
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # psutil reads /proc/meminfo and /proc/stat: ProcSubset=pid would hide them.
    assert "ProcSubset" not in d
    assert d["MemoryHigh"] and d["MemoryMax"]
    assert d["LoadCredential"] == ["mqtt_password:edgellm.mqtt_password"]


def test_unit_and_installer_agree_on_the_user_and_paths() -> None:
    d = directives(UNIT)
    script = INSTALL.read_text()
    assert f"service_user={d['User'][0]}" in script
    assert d["Group"] == d["User"]
    # install.sh puts models under the unit's StateDirectory and the config in its
    # ConfigurationDirectory, the two places ProtectSystem=strict leaves to the service.
    assert 'state_dir="$root/var/lib/' + d["StateDirectory"][0] + '"' in script
    assert 'config_dir="$root/etc/' + d["ConfigurationDirectory"][0] + '"' in script
    assert 'credential="$credstore/' + d["LoadCredential"][0].split(":")[1] + '"' in script


def test_jetson_dropin_opens_the_gpu_only() -> None:
    d = directives(JETSON)
    assert d["PrivateDevices"] == ["no"]
    assert d["SupplementaryGroups"] == ["video"]
    allowed = {entry.split()[0] for entry in d["DeviceAllow"]}
    assert {"/dev/nvmap", "/dev/nvhost-ctrl", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl"} <= (
        allowed
    )
    assert all(entry.split()[1] == "rw" for entry in d["DeviceAllow"])
    # Everything else of the sandbox stays: the drop-in only loosens these.
    assert set(d) <= {
        "PrivateDevices",
        "SupplementaryGroups",
        "PrivateUsers",
        "MemoryDenyWriteExecute",
        "Environment",
        "DeviceAllow",
    }
