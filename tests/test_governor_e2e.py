"""The daemon under replayed sensor traces: hot lowers threads, tight memory lowers the context,
critical memory refuses work, and requests keep succeeding throughout."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import Broker, Client, Daemon

pytestmark = pytest.mark.model

HEADER = "t,cpu_temp_c,throttled,mem_total,mem_available,swap_total,swap_used\n"
GB = 2**30


def trace(path: Path, rows: list[tuple[float, float, int]]) -> Path:
    """A CSV trace: (t, cpu °C, mem_available bytes) per row."""
    path.write_text(HEADER + "".join(f"{t},{c},0x0,{8 * GB},{m},0,0\n" for t, c, m in rows))
    return path


def governed(broker: Broker, tmp: Path, trace_file: Path) -> Daemon:
    return Daemon(
        broker,
        tmp,
        settings={
            "monitor": {"source": "replay", "trace": str(trace_file), "interval_s": 0.2},
            # Two threads on any machine (the default is its core count), and no sweep (on a busy
            # box it may pick 1 thread): there is always a step down to see.
            "model": {"n_threads": 2},
            "governor": {
                "hysteresis_s": 1,
                "telemetry_interval_s": 1,
                "ctx_hold_s": 1,
                "thread_sweep": False,
            },
        },
    ).start()


def ask(client: Client, d: Daemon, body: dict) -> dict:
    topic = f"{d.prefix}/response/test/{uuid.uuid4().hex}"
    client.subscribe(topic)
    client.publish(f"{d.prefix}/request", json.dumps(body), response_topic=topic)
    return client.until_terminal(topic, 120)[-1].body


def telemetry_until(client: Client, d: Daemon, check, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            body = client.next(f"{d.prefix}/telemetry", 1).body
        except TimeoutError:
            continue
        seen.append(body)
        if check(body):
            return body
    raise AssertionError(f"telemetry never matched; last: {seen[-3:]}")


def test_hot_trace_lowers_threads_and_requests_still_succeed(
    broker: Broker, model_path: Path, tmp_path: Path
):
    hot = trace(tmp_path / "hot.csv", [(0, 60.0, 4 * GB), (2, 84.0, 4 * GB), (600, 84.0, 4 * GB)])
    d = governed(broker, tmp_path, hot)
    client = Client(broker)
    try:
        client.subscribe(f"{d.prefix}/telemetry")
        start = telemetry_until(client, d, lambda b: b["cpu_temp_c"] == 60.0)
        assert start["threads"] == 2 and start["board"] == "generic"
        cooled = telemetry_until(client, d, lambda b: b["threads"] == 1)
        assert cooled["cpu_temp_c"] == 84.0
        assert "threads 2 -> 1" in cooled["decision"]["reason"]
        done = ask(client, d, {"prompt": "Say hello.", "max_tokens": 8})
        assert done["type"] == "done"
        events = [e for e in d.log_events() if e.get("event") == "threads_changed"]
        assert events and events[-1]["new"] == 1
        assert any(e.get("event") == "governor_decision" for e in d.log_events())
    finally:
        client.close()
        d.stop()


def test_tight_memory_shrinks_the_context_and_critical_memory_refuses(
    broker: Broker, model_path: Path, tmp_path: Path
):
    tight = trace(
        tmp_path / "mem.csv",
        [
            (0, 50.0, 4 * GB),  # plenty: the full 2048 context
            (2, 50.0, 150 * 2**20),  # 150 MiB usable: under the 200 MiB margin: shrink
            (8, 50.0, 50 * 2**20),  # 50 MiB: below critical (100 MiB): refuse new work
            (600, 50.0, 50 * 2**20),
        ],
    )
    d = governed(broker, tmp_path, tight)
    client = Client(broker)
    try:
        client.subscribe(f"{d.prefix}/telemetry")
        telemetry_until(client, d, lambda b: b["mem_available"] == 150 * 2**20)
        # The rebuild happens between jobs: a request drives it and still succeeds.
        deadline = time.monotonic() + 30
        while True:
            done = ask(client, d, {"prompt": "Say hello.", "max_tokens": 4})
            if done["type"] == "error" and done["code"] == "busy":
                break  # already at the critical stage: check the context below
            assert done["type"] == "done", done
            if any(e.get("event") == "context_rebuilt" for e in d.log_events()):
                break
            assert time.monotonic() < deadline
            time.sleep(0.3)
        rebuilt = [e for e in d.log_events() if e.get("event") == "context_rebuilt"]
        assert rebuilt and rebuilt[0]["old"] > 512 and rebuilt[0]["new"] == 512  # ctx_min
        telemetry_until(client, d, lambda b: b["admit"] is False)
        refused = ask(client, d, {"prompt": "Say hello.", "max_tokens": 4})
        assert refused["type"] == "error" and refused["code"] == "busy"
        assert "memory" in refused["message"]
        assert d.alive()
    finally:
        client.close()
        d.stop()
