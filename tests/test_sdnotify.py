"""The notify protocol against a datagram socket the test owns, as systemd would hold it."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from daemon import sdnotify
from daemon.sdnotify import Notifier, worker_alive


class NotifySocket:
    """The service manager's end: a bound AF_UNIX datagram socket that collects messages."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096)
        fields = {}
        for line in data.decode().split("\n"):
            key, _, value = line.partition("=")
            fields[key] = value
        return fields

    def empty(self) -> bool:
        self.sock.settimeout(0.2)
        try:
            self.sock.recv(4096)
        except TimeoutError:
            return True
        return False


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    """What the module logs (a fresh logger: a cached one would bypass capture_logs)."""
    with capture_logs() as captured:
        monkeypatch.setattr(sdnotify, "log", structlog.get_logger(sdnotify.__name__))
        yield captured


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # tmp_path can exceed the 108-byte limit of AF_UNIX socket paths; /tmp keeps it short.
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        yield Path(d)


@pytest.fixture
def manager(socket_dir: Path) -> Iterator[tuple[NotifySocket, Notifier]]:
    path = socket_dir / "notify"
    ns = NotifySocket(str(path))
    yield ns, Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    ns.sock.close()


def test_each_message_arrives_as_one_datagram(manager: tuple[NotifySocket, Notifier]) -> None:
    ns, notifier = manager
    assert notifier.enabled
    notifier.status("loading model smollm2-135m")
    assert ns.next() == {"STATUS": "loading model smollm2-135m"}
    notifier.ready("serving edgellm/pi/request")
    assert ns.next() == {"READY": "1", "STATUS": "serving edgellm/pi/request"}
    notifier.watchdog()
    assert ns.next() == {"WATCHDOG": "1"}
    notifier.watchdog_trigger()
    assert ns.next() == {"WATCHDOG": "trigger"}
    notifier.stopping("shutting down")
    assert ns.next() == {"STOPPING": "1", "STATUS": "shutting down"}
    assert ns.empty()


def test_reloading_carries_the_monotonic_clock(manager: tuple[NotifySocket, Notifier]) -> None:
    ns, notifier = manager
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = ns.next()
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after


def test_abstract_socket() -> None:
    name = f"edgellm-test-{uuid.uuid4().hex}"
    ns = NotifySocket("\0" + name)
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("up")
        assert ns.next() == {"READY": "1", "STATUS": "up"}
    finally:
        ns.sock.close()


def test_without_notify_socket_nothing_is_sent(logs: list[dict]) -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    notifier.ready("up")
    notifier.watchdog()
    notifier.watchdog_trigger()
    notifier.reloading()
    notifier.stopping("down")
    assert logs == []


def test_unsupported_transport_is_disabled(logs: list[dict]) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert [e["event"] for e in logs] == ["sd_notify_unsupported_socket"]
    notifier.ready("up")


def test_dead_socket_never_raises_and_warns_once(socket_dir: Path, logs: list[dict]) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(socket_dir / "gone")})
    assert notifier.enabled
    notifier.ready("up")
    notifier.watchdog()
    notifier.stopping("down")
    assert [e["event"] for e in logs] == ["sd_notify_failed"]
    assert logs[0]["log_level"] == "warning"


def test_socket_that_goes_away_later(
    manager: tuple[NotifySocket, Notifier], logs: list[dict]
) -> None:
    ns, notifier = manager
    notifier.watchdog()
    assert ns.next() == {"WATCHDOG": "1"}
    ns.sock.close()
    notifier.watchdog()
    assert [e["event"] for e in logs] == ["sd_notify_failed"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert notifier.watchdog_interval_s == expected


def test_watchdog_interval_reads_the_real_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@edgellm-unused")
    monkeypatch.setenv("WATCHDOG_USEC", "8000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.from_env().watchdog_interval_s == 4.0


def test_worker_alive() -> None:
    assert worker_alive(100.0, 100.0, 10.0)
    assert worker_alive(100.0, 110.0, 10.0)
    assert not worker_alive(100.0, 110.5, 10.0)
