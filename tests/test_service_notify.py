"""The service speaks systemd's notify protocol: READY after load+subscribe, pings while healthy,
an immediate watchdog trigger when the inference worker is wedged."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import config
from daemon.engine import Engine
from daemon.sdnotify import Notifier
from daemon.service import Service
from tests.helpers import Broker, Client

pytestmark = pytest.mark.model


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self, seconds: float) -> list[dict[str, str]]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))
        return [m for _, m in self.messages]

    def wait_for(self, key: str, value: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            self.drain(0.2)
            for _, m in self.messages[seen:]:
                if m.get(key) == value:
                    return m
            seen = len(self.messages)
        raise TimeoutError(f"no {key}={value} in {[m for _, m in self.messages]}")


class HangingEngine(Engine):
    """An engine whose generation hangs inside a 'native call' and never beats again."""

    release = threading.Event()
    hung_at: float | None = None

    def _run(self, job) -> None:  # type: ignore[no-untyped-def]
        HangingEngine.hung_at = time.monotonic()
        self.release.wait(30)
        job.finish_error("internal", "released")  # type: ignore[arg-type]


def run_service(
    broker: Broker, tmp: Path, factory: type[Engine]
) -> tuple[Service, NotifySocket, threading.Thread]:
    notify = NotifySocket(tmp / f"notify-{uuid.uuid4().hex[:6]}")
    cfg = config.parse(
        {
            "node_id": f"n{uuid.uuid4().hex[:6]}",
            "mqtt": {"host": broker.host, "port": broker.port},
            # The pings are what is measured here: no thread sweep decoding at 2 threads while
            # a loaded CI machine makes one token take most of this test's 1 s wedge limit.
            "governor": {"thread_sweep": False},
        }
    )
    # WatchdogSec=2 s: pings every second; a worker silent for 1 s is wedged.
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"})
    service = Service(cfg, notifier=notifier, engine_factory=factory)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    return service, notify, thread


@pytest.fixture
def healthy(broker: Broker, model_path: Path, tmp_path: Path) -> Iterator[tuple]:
    service, notify, thread = run_service(broker, tmp_path, Engine)
    yield service, notify
    service.stop_event.set()
    thread.join(30)


def test_ready_after_subscribe_then_pings_and_stopping(healthy, broker: Broker):
    service, notify = healthy
    ready = notify.wait_for("READY", "1", 30)
    assert "serving smollm2-135m" in ready["STATUS"]
    assert service.transport is not None and service.transport.ready.is_set()
    before = sum(1 for m in notify.drain(0) if m.get("WATCHDOG") == "1")
    notify.drain(3.2)
    pings = sum(1 for m in notify.drain(0) if m.get("WATCHDOG") == "1") - before
    assert 2 <= pings <= 5
    assert not any(m.get("WATCHDOG") == "trigger" for m in notify.drain(0))
    service.stop_event.set()
    notify.wait_for("STOPPING", "1", 30)


def test_wedged_worker_triggers_the_watchdog(broker: Broker, model_path: Path, tmp_path: Path):
    service, notify, thread = run_service(broker, tmp_path, HangingEngine)
    try:
        notify.wait_for("READY", "1", 30)
        client = Client(broker)
        topic = f"{service.topics.base}/response/test/{uuid.uuid4().hex}"
        client.subscribe(topic)
        client.publish(
            f"{service.topics.request}", json.dumps({"prompt": "hi"}), response_topic=topic
        )
        trigger = notify.wait_for("WATCHDOG", "trigger", 10)
        assert trigger
        notify.drain(1.5)
        trigger_time = next(t for t, m in notify.messages if m.get("WATCHDOG") == "trigger")
        assert HangingEngine.hung_at is not None and trigger_time > HangingEngine.hung_at
        # Once wedged, no healthy ping is sent again (how fast: bench/watchdog.py).
        assert not [t for t, m in notify.messages if m.get("WATCHDOG") == "1" and t > trigger_time]
        client.close()
    finally:
        HangingEngine.release.set()
        service.stop_event.set()
        thread.join(30)
