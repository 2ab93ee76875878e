"""deploy/install.sh and uninstall.sh: the dry-run plan, a real install into a temporary root, and
the installed daemon serving the test broker."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, Broker, Client

INSTALL = REPO / "deploy" / "install.sh"
UNINSTALL = REPO / "deploy" / "uninstall.sh"
# One real install per session: it builds a venv and pip-installs the package (the llama.cpp
# wheel comes from pip's cache after the first build on this machine).
INSTALL_TIMEOUT_S = 1200


def sh(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run a script; fail with its output if it fails; return stdout and stderr together."""
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "EDGELLM_BOARD": "cpu", **(env or {})},
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"{args[0]} exited {result.returncode}:\n{out}"
    return out


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its mode and size, to show that nothing changed."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_size)
        for p in sorted(root.rglob("*"))
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the plan --------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "existing").write_text("untouched\n")
    before = tree(tmp_path)
    out = sh(INSTALL, "--dry-run", "--prefix", tmp_path / "root")
    assert tree(tmp_path) == before
    root = tmp_path / "root"
    for step in (
        f"-m venv {root}/opt/edgellm/venv",
        f"{root}/opt/edgellm/venv/bin/python -m pip install",
        f"write {root}/etc/edgellm/config.yaml from {REPO}/config.yaml"
        f" with model.dir: {root}/var/lib/edgellm/models",
        f"chmod 0640 {root}/etc/edgellm/config.yaml",
        f"model fetch -c {root}/etc/edgellm/config.yaml --dir {root}/var/lib/edgellm/models",
        f"install -m 0644 {REPO}/systemd/edgellm.service {root}/etc/systemd/system/edgellm.service",
    ):
        assert step in out, f"missing from the plan: {step}\n{out}"
    assert "jetson.conf" not in out
    assert "GGML_CUDA" not in out
    assert "systemctl" not in out.replace("not starting the service", "")


def test_dry_run_of_a_real_install_changes_nothing(tmp_path: Path) -> None:
    """Without --prefix the plan is the real one (users, apt, systemctl), and still only printed."""
    watched = [Path("/opt/edgellm"), Path("/etc/edgellm"), Path("/etc/systemd/system")]
    before = {p: tree(p) for p in watched}
    out = sh(INSTALL, "--dry-run")
    assert {p: tree(p) for p in watched} == before
    assert "+ install -m 0644" in out and "/etc/systemd/system/edgellm.service" in out


def test_jetson_plan_builds_with_cuda_and_adds_the_dropin(tmp_path: Path) -> None:
    out = sh(INSTALL, "--dry-run", "--prefix", tmp_path, env={"EDGELLM_BOARD": "jetson"})
    assert "CMAKE_ARGS=-DGGML_CUDA=on" in out
    assert f"{tmp_path}/etc/systemd/system/edgellm.service.d/jetson.conf" in out
    assert not any(tmp_path.iterdir())


def test_dry_run_with_broker_plans_the_mosquitto_files(tmp_path: Path) -> None:
    out = sh(INSTALL, "--dry-run", "--with-broker", "--no-model", "--prefix", tmp_path)
    for path in ("etc/mosquitto/conf.d/edgellm.conf", "etc/mosquitto/edgellm.acl"):
        assert f"{tmp_path}/{path}" in out
    assert f"{tmp_path}/etc/credstore/edgellm.mqtt_password (mode 0600)" in out
    assert "model fetch" not in out


@pytest.mark.skipif(
    shutil.which("shellcheck") is None and os.environ.get("EDGELLM_REQUIRE_MODEL") != "1",
    reason="shellcheck is not installed (tests/run.sh installs it)",
)
def test_scripts_pass_shellcheck() -> None:
    scripts = [
        *sorted((REPO / "deploy").glob("*.sh")),
        REPO / "tests" / "run.sh",
        REPO / ".ci" / "run",
    ]
    sh("shellcheck", *scripts)


def test_help_and_bad_options() -> None:
    assert "--prefix DIR" in sh(INSTALL, "-h")
    assert "--purge" in sh(UNINSTALL, "--help")
    for script in (INSTALL, UNINSTALL):
        bad = subprocess.run([script, "--frobnicate"], capture_output=True, text=True, check=False)
        assert bad.returncode == 2 and "unknown option" in bad.stderr


# -- a real install into a temporary root --------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prefix")
    sh(INSTALL, "--prefix", root, "--no-model", timeout=INSTALL_TIMEOUT_S)
    return root


def test_install_creates_venv_config_and_unit(installed: Path) -> None:
    edgellm = installed / "opt/edgellm/venv/bin/edgellm"
    assert edgellm.is_file() and os.access(edgellm, os.X_OK)
    config = installed / "etc/edgellm/config.yaml"
    assert mode(config) == 0o640
    assert mode(installed / "etc/edgellm") == 0o750
    models = installed / "var/lib/edgellm/models"
    assert models.is_dir()
    assert yaml.safe_load(config.read_text())["model"]["dir"] == str(models)
    unit = installed / "etc/systemd/system/edgellm.service"
    assert unit.read_text() == (REPO / "systemd/edgellm.service").read_text()
    assert mode(unit) == 0o644
    assert not (installed / "etc/systemd/system/edgellm.service.d").exists()
    assert (installed / "opt/edgellm/DEPLOY.md").is_file()


def test_installed_check_config_accepts_the_installed_config(installed: Path) -> None:
    config = installed / "etc/edgellm/config.yaml"
    out = sh(installed / "opt/edgellm/venv/bin/edgellm", "check-config", config)
    assert f"# {config}: valid" in out
    assert f"dir: {installed}/var/lib/edgellm/models" in out


def test_a_second_run_keeps_the_config(installed: Path) -> None:
    config = installed / "etc/edgellm/config.yaml"
    edited = config.read_text().replace("n_ctx: null", "n_ctx: 1024")
    assert edited != config.read_text()
    config.write_text(edited)
    out = sh(INSTALL, "--prefix", installed, "--no-model", timeout=INSTALL_TIMEOUT_S)
    assert f"keeping {config}" in out
    assert config.read_text() == edited
    assert mode(config) == 0o640


@pytest.mark.model
def test_installed_daemon_comes_online(
    installed: Path, broker: Broker, model_path: Path, tmp_path: Path
) -> None:
    """The installed venv's `edgellm serve` on the installed config, pointed at the test broker."""
    cfg = yaml.safe_load((installed / "etc/edgellm/config.yaml").read_text())
    node = f"inst{uuid.uuid4().hex[:6]}"
    cfg["node_id"] = node
    cfg["mqtt"]["port"] = broker.port
    cfg["model"]["dir"] = str(model_path.parent)
    cfg["logging"]["format"] = "json"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "daemon.log"
    client = Client(broker)
    client.subscribe(f"edgellm/{node}/status")
    client.subscribe(f"edgellm/{node}/response/#")
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [installed / "opt/edgellm/venv/bin/edgellm", "serve", "-c", config],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 60
        while client.next(f"edgellm/{node}/status", 60).body.get("state") != "online":
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        client.publish(f"edgellm/{node}/request", '{"id": "i1", "prompt": "Hi", "max_tokens": 3}')
        replies = client.until_terminal(f"edgellm/{node}/response/#", timeout=60)
        assert replies[-1].body["type"] == "done", log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
    # The installed copy of the package, not the checkout's (cwd is outside the checkout).
    assert str(installed / "opt/edgellm/venv") in (
        subprocess.run(
            [
                installed / "opt/edgellm/venv/bin/python",
                "-c",
                "import daemon; print(daemon.__file__)",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
        ).stdout
    )


# -- uninstall ------------------------------------------------------------------------------------


@pytest.fixture
def fake_install(tmp_path: Path) -> Iterator[Path]:
    """The tree install.sh leaves (Jetson drop-in and broker files included), minus the venv."""
    files = [
        "opt/edgellm/venv/bin/edgellm",
        "opt/edgellm/DEPLOY.md",
        "etc/edgellm/config.yaml",
        "var/lib/edgellm/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "var/cache/edgellm/cuda/x",
        "etc/systemd/system/edgellm.service",
        "etc/systemd/system/edgellm.service.d/jetson.conf",
        "etc/systemd/system/other.service",
        "etc/credstore/edgellm.mqtt_password",
        "etc/credstore/someone-else",
        "etc/mosquitto/conf.d/edgellm.conf",
        "etc/mosquitto/edgellm.acl",
        "etc/mosquitto/edgellm.passwd",
        "etc/mosquitto/mosquitto.conf",
    ]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text(f)
    yield tmp_path


def remaining(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_uninstall_dry_run_changes_nothing(fake_install: Path) -> None:
    before = tree(fake_install)
    out = sh(UNINSTALL, "--dry-run", "--purge", "--prefix", fake_install)
    assert tree(fake_install) == before
    assert f"rm -rf -- {fake_install}/opt/edgellm" in out


def test_uninstall_keeps_config_and_models(fake_install: Path) -> None:
    sh(UNINSTALL, "--prefix", fake_install)
    assert remaining(fake_install) == {
        "etc/edgellm/config.yaml",
        "var/lib/edgellm/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "var/cache/edgellm/cuda/x",
        "etc/systemd/system/other.service",
        "etc/credstore/edgellm.mqtt_password",
        "etc/credstore/someone-else",
        "etc/mosquitto/conf.d/edgellm.conf",
        "etc/mosquitto/edgellm.acl",
        "etc/mosquitto/edgellm.passwd",
        "etc/mosquitto/mosquitto.conf",
    }
    sh(UNINSTALL, "--prefix", fake_install)  # again: nothing left to do is not an error


def test_uninstall_purge_removes_everything_of_ours(fake_install: Path) -> None:
    sh(UNINSTALL, "--purge", "--prefix", fake_install)
    assert remaining(fake_install) == {
        "etc/systemd/system/other.service",
        "etc/credstore/someone-else",
        "etc/mosquitto/mosquitto.conf",
    }
