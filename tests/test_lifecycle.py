"""The daemon as a process: start-up, busy and timeout replies, broker restarts, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import REPO, Broker, Client, Daemon, free_port, poll

pytestmark = pytest.mark.model


def send(client: Client, daemon: Daemon, body: dict) -> str:
    topic = f"{daemon.prefix}/response/test/{uuid.uuid4().hex}"
    client.subscribe(topic)
    client.publish(f"{daemon.prefix}/request", json.dumps(body), response_topic=topic)
    return topic


LONG = {
    "prompt": "Write a very long story about a dragon and a knight.",
    "max_tokens": 400,
    "temperature": 0.8,
    "seed": 5,
}


def test_full_queue_answers_busy_and_every_accepted_request_finishes(
    broker: Broker, model_path: Path, tmp_path: Path
):
    d = Daemon(broker, tmp_path, settings={"limits": {"queue_size": 1}}).start()
    client = Client(broker)
    try:
        running = send(client, d, {**LONG, "stream": True})
        client.next(running, 60)  # the first token: it is running now
        queued = send(client, d, LONG)
        refused = send(client, d, LONG)
        busy = client.until_terminal(refused, 30)
        assert [r.body["code"] for r in busy] == ["busy"]
        assert "queue is full" in busy[0].body["message"]
        # Both accepted requests still get exactly one terminal reply each.
        assert client.until_terminal(running, 120)[-1].body["type"] == "done"
        assert [r.body["type"] for r in client.until_terminal(queued, 120)] == ["done"]
        assert client.quiet(queued, 0.3) == []
    finally:
        client.close()
        d.stop()


def test_deadline_gives_a_timeout_error(broker: Broker, model_path: Path, tmp_path: Path):
    # No start-up sweep: a request queued behind it would time out before it starts.
    d = Daemon(
        broker,
        tmp_path,
        settings={"limits": {"request_timeout_s": 0.5}, "governor": {"thread_sweep": False}},
    ).start()
    client = Client(broker)
    try:
        topic = send(client, d, {**LONG, "max_tokens": 1000})
        err = client.until_terminal(topic, 30)[-1].body
        assert err["type"] == "error" and err["code"] == "timeout"
        assert 0 < err["usage"]["completion_tokens"] < 1000
    finally:
        client.close()
        d.stop()


def test_sigterm_publishes_offline_and_exits_zero(broker: Broker, model_path: Path, tmp_path: Path):
    d = Daemon(broker, tmp_path).start()
    client = Client(broker)
    try:
        running = send(client, d, {**LONG, "max_tokens": 1000, "stream": True})
        client.next(running, 60)
        status_topic = f"{d.prefix}/status"
        assert d.stop(signal.SIGTERM) == 0
        # The running request got its one terminal reply before the daemon left.
        assert client.until_terminal(running, 10)[-1].body["type"] in ("done", "error")
        client.subscribe(status_topic)  # retained: the last state is delivered on subscribe
        assert client.next(status_topic, 5).body["state"] == "offline"
        events = [e["event"] for e in d.log_events()]
        order = ["shutdown_begin", "shutdown_engine_stopped", "mqtt_disconnected", "shutdown_done"]
        assert [e for e in events if e in order] == order
    finally:
        client.close()


def test_kill_leaves_the_last_will_offline(broker: Broker, model_path: Path, tmp_path: Path):
    d = Daemon(broker, tmp_path, settings={"mqtt": {"keepalive_s": 5}}).start()
    client = Client(broker)
    try:
        d.stop(signal.SIGKILL)
        client.subscribe(f"{d.prefix}/status")
        # The broker publishes the will once it sees the socket close.
        deadline_states = []
        for _ in range(20):
            state = client.next(f"{d.prefix}/status", 10).body["state"]
            deadline_states.append(state)
            if state == "offline":
                break
        assert deadline_states[-1] == "offline"
    finally:
        client.close()


def test_broker_restart_resubscribes_and_serves_again(model_path: Path, tmp_path: Path):
    broker = Broker(free_port(), tmp_path).start()
    d = Daemon(broker, tmp_path).start()
    try:
        broker.stop()
        broker.start()
        # No persistence on the test broker: the retained online status comes back only if
        # the daemon reconnected, resubscribed and republished it.
        d.wait_status("online", timeout=40)
        client = Client(broker)
        try:
            done = client.until_terminal(send(client, d, {"prompt": "Hi", "max_tokens": 4}), 60)
            assert done[-1].body["type"] == "done"
        finally:
            client.close()
    finally:
        d.stop()
        broker.stop()


def test_missing_model_exits_with_a_clear_error(broker: Broker, tmp_path: Path):
    d = Daemon(broker, tmp_path, settings={"model": {"name": str(tmp_path / "nope.gguf")}})
    d.start(wait_online=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 3
    assert "nope.gguf" in d.log()


def run_ask(broker: Broker, daemon: Daemon, *args: str) -> subprocess.CompletedProcess:
    """`edgellm ask` as a user would run it, against the test broker and daemon."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", "ask", "--host", broker.host, "--port",
         str(broker.port), "--node-id", daemon.node_id, *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_ask_streams_the_answer(broker: Broker, daemon: Daemon):
    """The streamed answer is printed; the same seed prints the same text (what the words are
    depends on the CPU's kernels, so they are not asserted)."""
    args = ("--seed", "7", "--max-tokens", "20", "What is the capital of France?")
    first, second = run_ask(broker, daemon, *args), run_ask(broker, daemon, *args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() and first.stdout.endswith("\n")
    assert second.stdout == first.stdout


def test_cli_ask_reports_errors(broker: Broker, daemon: Daemon):
    out = run_ask(broker, daemon, "--v311", "--max-tokens", "0", "x")
    assert out.returncode == 1
    assert "bad_request" in out.stderr


def test_sighup_applies_live_keys_and_reports_the_rest(
    broker: Broker, model_path: Path, tmp_path: Path
):
    # A short default answer (16 tokens) keeps the test quick on a slow or busy machine.
    d = Daemon(broker, tmp_path, settings={"generation": {"max_tokens": 16}}).start()
    client = Client(broker)

    def events(name: str) -> list[dict]:
        return [e for e in d.log_events() if e.get("event") == name]

    try:
        before = client.until_terminal(send(client, d, {"prompt": "Tell me a story."}), 60)
        assert before[-1].body["usage"]["completion_tokens"] > 3
        d.settings = {"generation": {"max_tokens": 3}, "mqtt": {"keepalive_s": 60}}
        d.write_config()
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        event = poll(lambda: events("reloaded"), 10, "reloaded")[-1]
        assert event["applied"] == ["generation.max_tokens"]
        assert event["needs_restart"] == ["mqtt.keepalive_s"]
        after = client.until_terminal(send(client, d, {"prompt": "Tell me a story."}), 60)
        assert after[-1].body["usage"]["completion_tokens"] == 3
        # A broken file is refused and the daemon keeps serving on the previous config.
        d.config_path.write_text("generation: {max_tokens: -1}\n")
        d.proc.send_signal(signal.SIGHUP)
        poll(lambda: events("reload_failed"), 10, "reload_failed")
        again = client.until_terminal(send(client, d, {"prompt": "Tell me a story."}), 60)
        assert again[-1].body["usage"]["completion_tokens"] == 3
        assert d.alive()
    finally:
        client.close()
        d.stop()


def test_sigusr1_measures_the_thread_counts_again(broker: Broker, daemon: Daemon):
    def sweeps() -> list[dict]:
        return [e for e in daemon.log_events() if e.get("event") == "thread_sweep"]

    # Up to ~1 s per thread count (the sweep's budget), and there are as many counts as cores.
    budget = 30 + 2 * (os.cpu_count() or 1)
    start_up = len(poll(sweeps, budget, "the start-up sweep"))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGUSR1)
    again = poll(lambda: sweeps()[start_up:], budget, "a second sweep")[-1]
    # Every count from 1 up to the engine's ceiling (which depends on the machine's cores).
    counts = sorted(int(n) for n in again["tokens_per_s"])
    assert counts == list(range(1, len(counts) + 1))
    assert str(again["best"]) in again["tokens_per_s"]
    client = Client(broker)
    try:
        done = client.until_terminal(send(client, daemon, {"prompt": "Hi", "max_tokens": 3}), 60)
        assert done[-1].body["type"] == "done"
    finally:
        client.close()
