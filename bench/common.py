"""Shared bench set-up: a loopback broker and a daemon process, reusing the tests' helpers."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon import cpus
from tests.helpers import Broker, Client, Daemon, free_port, nodelay  # noqa: F401  (re-exported)


def machine() -> str:
    """One line naming the machine a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{cpu}, {cpus.usable()} CPUs, Python {platform.python_version()}"


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgellm-bench-"))


def threads_arg(ap: argparse.ArgumentParser) -> None:
    """The --threads option every daemon bench takes."""
    ap.add_argument("--threads", type=int, default=None, help="model.n_threads (default: cores)")


@contextmanager
def serving(
    settings: dict[str, Any] | None = None,
    threads: int | None = None,
    broker: Callable[[int, Path], Broker] = Broker,
) -> Iterator[tuple[Broker, Daemon]]:
    """A broker on a free loopback port and a daemon on it (settings merged over the tests'
    defaults, threads as model.n_threads), both stopped on the way out. broker makes the
    broker from its port and work dir (a Broker subclass, say)."""
    tmp = workdir()
    settings = dict(settings or {})
    if threads:
        settings["model"] = {**settings.get("model", {}), "n_threads": threads}
    b = broker(free_port(), tmp).start()
    d = Daemon(b, tmp, settings=settings)
    try:
        d.start()
        yield b, d
    finally:
        if d.proc is not None:
            d.stop()
        b.stop()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "p90": round(ordered[max(0, int(len(ordered) * 0.9) - 1)], 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def report(name: str, result: dict[str, Any]) -> None:
    print(json.dumps({"bench": name, "machine": machine(), **result}, indent=2))


def percentile(values: list[float], pct: float) -> float | None:
    """The pct-th percentile (nearest rank) of values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[rank], 3)


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    return round(psutil.Process(pid).memory_info().rss / 2**20, 2)


class Tally:
    """An MQTT v5 client of its own that sends requests with a Response Topic under `root` and
    counts every reply per request id (the last level of the reply topic), duplicates included.

    Each request replies to `<root>/<id>` with the id as Correlation Data; `terminal[id]` lists
    every done/error that arrived for it, so a lost request has none and a duplicated one two.
    """

    def __init__(self, broker: Broker, root: str, client_id: str | None = None):
        self.root = root
        self.cond = threading.Condition()
        self.sent_at: dict[str, float] = {}
        self.first_at: dict[str, float] = {}
        self.terminal: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self.terminal_at: dict[str, float] = {}
        self.deltas: Counter[str] = Counter()
        self.stray = 0  # replies for ids this tally never sent
        self.bad_correlation = 0  # replies whose Correlation Data is not their request's id
        self._suback = threading.Event()
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"bench-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.c.max_queued_messages_set(10000)
        self.c.on_socket_open = nodelay
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *_a: self._suback.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe(f"{root}/#", qos=1)
        if not self._suback.wait(10):
            raise TimeoutError(f"no SUBACK for {root}/#")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.monotonic()
        rid = msg.topic.rsplit("/", 1)[-1]
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"type": "unparsable"}
        corr = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        with self.cond:
            if rid not in self.sent_at:
                self.stray += 1
                return
            if corr != rid.encode():
                self.bad_correlation += 1
            self.first_at.setdefault(rid, now)
            if body.get("type") == "delta":
                self.deltas[rid] += 1
            elif body.get("type") in ("done", "error"):
                self.terminal[rid].append(body)
                self.terminal_at.setdefault(rid, now)
                self.cond.notify_all()

    def send(self, request_topic: str, rid: str, body: dict[str, Any]) -> None:
        """Publish one request (QoS 1, not waiting for the PUBACK) replying to <root>/<rid>."""
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{self.root}/{rid}"
        props.CorrelationData = rid.encode()
        with self.cond:
            self.sent_at[rid] = time.monotonic()
        info = self.c.publish(
            request_topic, json.dumps({"id": rid, **body}), qos=1, properties=props
        )
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # Only a full outgoing queue (max_queued_messages) gets here: a bench defect.
            raise RuntimeError(f"publish of {rid} refused: {mqtt.error_string(info.rc)}")

    def cancel(self, cancel_topic: str, rid: str) -> None:
        self.c.publish(cancel_topic, json.dumps({"id": rid}), qos=1)

    def done_ids(self, rids: list[str] | set[str]) -> set[str]:
        with self.cond:
            return {r for r in rids if r in self.terminal}

    def wait_any(self, rids: set[str], timeout: float) -> set[str]:
        """Wait up to timeout for any of rids to have a terminal reply; return those that do."""
        with self.cond:
            self.cond.wait_for(lambda: any(r in self.terminal for r in rids), timeout)
            return {r for r in rids if r in self.terminal}

    def wait_all(self, rids: list[str] | set[str], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: all(r in self.terminal for r in rids), timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def run_windowed(
    tally: Tally,
    requests: Iterable[tuple[str, str, dict[str, Any]]],
    window: int,
    timeout_s: float,
    deadline: float,
    after_send: Callable[[str], None] | None = None,
    after_terminal: Callable[[int], None] | None = None,
) -> int:
    """Send (request_topic, rid, body) items keeping at most `window` without a terminal reply.

    A request silent for timeout_s stops holding its slot (it is counted lost at the end if
    nothing ever comes). Stops sending at `deadline` (time.monotonic()). after_send(rid) runs
    after each publish, after_terminal(n) after each request that got its terminal reply.
    Returns how many were sent.
    """
    inflight: set[str] = set()
    sent = 0
    finished = 0
    for request_topic, rid, body in requests:
        while len(inflight) >= window:
            if time.monotonic() > deadline:
                return sent
            done = tally.wait_any(inflight, 0.5)
            now = time.monotonic()
            expired = {r for r in inflight if now - tally.sent_at[r] > timeout_s}
            for _ in done:
                finished += 1
                if after_terminal is not None:
                    after_terminal(finished)
            inflight -= done | expired
        if time.monotonic() > deadline:
            return sent
        tally.send(request_topic, rid, body)
        inflight.add(rid)
        sent += 1
        if after_send is not None:
            after_send(rid)
    end = min(deadline, time.monotonic() + timeout_s)
    while inflight and time.monotonic() < end:
        done = tally.wait_any(inflight, 0.5)
        for _ in done:
            finished += 1
            if after_terminal is not None:
                after_terminal(finished)
        inflight -= done
    return sent


def outcomes(tally: Tally, rids: Iterable[str]) -> dict[str, Any]:
    """Per request: lost (no terminal), duplicated (more than one), and the code histogram."""
    histogram: Counter[str] = Counter()
    lost = duplicated = 0
    with tally.cond:
        for rid in rids:
            got = tally.terminal.get(rid, [])
            if not got:
                lost += 1
                continue
            if len(got) > 1:
                duplicated += 1
            first = got[0]
            histogram["done" if first["type"] == "done" else str(first.get("code"))] += 1
    return {"lost": lost, "duplicated": duplicated, "codes": dict(histogram.most_common())}


def settle(d: Daemon, timeout: float = 120.0) -> bool:
    """Wait for the daemon's start-up thread sweep to end, so that what is measured is the load
    and not the sweep (it holds the worker a second or more per thread count). False if it did
    not end within timeout (or the sweep is off). The sweep measures prompt processing after
    decode unless model.n_threads_batch is set."""
    fixed_batch = d.config().get("model", {}).get("n_threads_batch") is not None
    last = "thread_sweep" if fixed_batch else "prefill_sweep"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.get("event") in (last, "thread_sweep_failed") for e in d.log_events()):
            return True
        time.sleep(0.2)
    return False
