"""Test parts: a real mosquitto on a free loopback port, an MQTT client, a daemon process."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon import cpus

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def cores() -> int:
    """The CPUs this process may run on (a container or taskset may allow fewer than exist)."""
    return cpus.usable()


def poll(
    check: Callable[[], T | None], timeout: float, what: str = "condition", every: float = 0.05
) -> T:
    """check()'s first truthy result, asked every `every` s until `timeout` s have passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(every)


def nodelay(_client: Any, _userdata: Any, sock: Any) -> None:
    """paho's on_socket_open: TCP_NODELAY, or each QoS 1 exchange may wait ~40 ms (Nagle)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port}")


@dataclass
class Broker:
    """A mosquitto process of the test's own on loopback."""

    port: int
    workdir: Path
    extra_conf: str = ""
    proc: subprocess.Popen | None = None
    host: str = LOOPBACK

    def persistence_conf(self) -> str:
        """The persistence lines of its config (off: a broker of its own for each test)."""
        return "persistence false\n"

    def start(self) -> Broker:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {LOOPBACK}\n"
            "allow_anonymous true\n"
            "set_tcp_nodelay true\n"
            f"{self.persistence_conf()}"
            f"{self.extra_conf}\n"
        )
        self.proc = subprocess.Popen(
            [exe, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "mosquitto.log").open("ab"),
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None


@dataclass
class Reply:
    topic: str
    body: dict[str, Any]
    correlation: bytes | None
    qos: int = 1


class Client:
    """A paho test client: subscribes, publishes, and collects what arrives per topic."""

    def __init__(self, broker: Broker, v5: bool = True):
        self.v5 = v5
        self._queues: dict[str, queue.Queue[Reply]] = {}
        self._subacks: queue.Queue[int] = queue.Queue()
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda _c, _u, mid, _rc, _p: self._subacks.put(mid)
        self.c.on_socket_open = nodelay
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"raw": msg.payload.decode("utf-8", "replace")}
        corr = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        # Queues are keyed by subscription, so a wildcard subscriber finds what it matched.
        for sub in list(self._queues):
            if mqtt.topic_matches_sub(sub, msg.topic):
                self._queues[sub].put(Reply(msg.topic, body, corr, msg.qos))

    def _queue(self, topic: str) -> queue.Queue[Reply]:
        return self._queues.setdefault(topic, queue.Queue())

    def subscribe(self, topic: str) -> None:
        self._queue(topic)
        _rc, mid = self.c.subscribe(topic, qos=1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if self._subacks.get(timeout=0.1) == mid:
                    return
            except queue.Empty:
                pass
        raise TimeoutError(f"no SUBACK for {topic}")

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        props = None
        if self.v5 and (response_topic or correlation):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        self.c.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)

    def next(self, topic: str, timeout: float = 60.0) -> Reply:
        try:
            return self._queue(topic).get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"nothing arrived on {topic} within {timeout} s") from None

    def until_terminal(self, topic: str, timeout: float = 120.0) -> list[Reply]:
        """Every message on topic up to and including the first done/error."""
        out: list[Reply] = []
        deadline = time.monotonic() + timeout
        while True:
            reply = self.next(topic, max(0.1, deadline - time.monotonic()))
            out.append(reply)
            if reply.body.get("type") in ("done", "error"):
                return out

    def quiet(self, topic: str, seconds: float) -> list[Reply]:
        """What else arrives on topic within seconds (to prove nothing more comes)."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                out.append(self._queue(topic).get(timeout=left))
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@dataclass
class Daemon:
    """`python -m daemon serve` as a real process, with its own config file and log."""

    broker: Broker
    workdir: Path
    node_id: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:6]}")
    settings: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    # Ports of its own, the same in every config it writes (a reload must not see them change).
    http_port: int = field(default_factory=lambda: free_port())
    wyoming_port: int = field(default_factory=lambda: free_port())

    @property
    def prefix(self) -> str:
        return f"edgellm/{self.node_id}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"daemon-{self.node_id}.log"

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "node_id": self.node_id,
            "mqtt": {"host": self.broker.host, "port": self.broker.port},
            "logging": {"format": "json", "level": "info"},
            # The suite sends bursts on one client; the rate-limit tests turn limits back on.
            "policy": {"rate_limit": {"requests_per_min": None, "tokens_per_min": None}},
            # Ports of their own: daemons side by side never race for 11434 and 10700.
            "http": {"port": self.http_port},
            "wyoming": {"port": self.wyoming_port},
        }
        for key, value in self.settings.items():
            if isinstance(value, dict):
                cfg.setdefault(key, {}).update(value)
            else:
                cfg[key] = value
        return cfg

    @property
    def config_path(self) -> Path:
        return self.workdir / f"config-{self.node_id}.yaml"

    def write_config(self) -> Path:
        self.config_path.write_text(yaml.safe_dump(self.config()))
        return self.config_path

    def start(self, wait_online: bool = True) -> Daemon:
        path = self.write_config()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "serve", "-c", str(path)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("wb"),
        )
        if wait_online:
            self.wait_status("online")
        return self

    def wait_status(self, state: str, timeout: float = 60.0) -> dict[str, Any]:
        client = Client(self.broker)
        try:
            client.subscribe(f"{self.prefix}/status")
            deadline = time.monotonic() + timeout
            while True:
                if self.proc is not None and self.proc.poll() is not None and state == "online":
                    raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
                try:
                    reply = client.next(f"{self.prefix}/status", 0.2)
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"status never became {state}:\n{self.log()}") from None
                    continue
                if reply.body.get("state") == state:
                    return reply.body
        finally:
            client.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Leave every thread's stack in the log (faulthandler on SIGUSR2) before killing.
            self.proc.send_signal(signal.SIGUSR2)
            with contextlib.suppress(TimeoutError):
                poll(lambda: "most recent call first" in self.log(), 3, "a stack dump")
            self.proc.kill()
            raise AssertionError(f"daemon did not stop within {timeout} s:\n{self.log()}") from None


def make_request(**fields: Any) -> Any:
    """A Request as a front door would make it: a fresh id, defaults, and these fields."""
    from daemon.requests import ReplyAddress, Request, StreamMode

    rid = fields.pop("id", None) or uuid.uuid4().hex[:8]
    base: dict[str, Any] = dict(
        id=rid,
        reply=ReplyAddress(f"r/{rid}"),
        messages=None,
        prompt="x",
        system=None,
        max_tokens=None,
        temperature=None,
        top_p=None,
        stop=(),
        seed=None,
        stream=StreamMode.OFF,
        received_at=0.0,
        deadline=1e12,
    )
    return Request(**{**base, **fields})
