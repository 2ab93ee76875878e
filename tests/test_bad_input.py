"""Hostile payloads against the real daemon: each gets a clear error, the daemon keeps serving,
and its memory stays flat."""

from __future__ import annotations

import json
import uuid

import psutil
import pytest

from tests.helpers import Client, Daemon

pytestmark = pytest.mark.model


def reply_topic(d: Daemon) -> str:
    return f"{d.prefix}/response/bad/{uuid.uuid4().hex[:8]}"


def error_for(client: Client, d: Daemon, payload: bytes) -> dict:
    topic = reply_topic(d)
    client.subscribe(topic)
    client.publish(f"{d.prefix}/request", payload, response_topic=topic)
    body = client.until_terminal(topic, 30)[-1].body
    assert body["type"] == "error", body
    return body


def still_serving(client: Client, d: Daemon) -> None:
    topic = reply_topic(d)
    client.subscribe(topic)
    client.publish(
        f"{d.prefix}/request",
        json.dumps({"prompt": "Say hi.", "max_tokens": 2}),
        response_topic=topic,
    )
    assert client.until_terminal(topic, 60)[-1].body["type"] == "done"


@pytest.mark.parametrize(
    ("payload", "code", "says"),
    [
        (b'{"prompt": "caf\xc3\x28"}', "bad_request", "UTF-8"),
        (b"\xff\xfe\xfa", "bad_request", "UTF-8"),
        (b"[" * 60_000, "bad_request", "nested too deeply"),
        (b'{"a":' * 12_000, "bad_request", "nested too deeply"),
        (b"x" * (10 * 1024 * 1024), "too_long", "10485760 bytes"),
    ],
    ids=["invalid-utf8-in-json", "binary", "deep-array", "deep-object", "10-MB"],
)
def test_a_hostile_payload_gets_a_clear_error_and_the_daemon_keeps_serving(
    client: Client, daemon: Daemon, payload: bytes, code: str, says: str
):
    err = error_for(client, daemon, payload)
    assert err["code"] == code and says in err["message"]
    still_serving(client, daemon)


@pytest.mark.parametrize("wildcard", ["a/+/b", "a/#", "#"])
def test_a_wildcard_reply_to_is_refused_on_the_default_topic(
    client: Client, daemon: Daemon, wildcard: str
):
    rid = f"wild-{uuid.uuid4().hex[:6]}"
    default = f"{daemon.prefix}/response/{rid}"
    client.subscribe(default)
    client.publish(
        f"{daemon.prefix}/request", json.dumps({"id": rid, "prompt": "hi", "reply_to": wildcard})
    )
    err = client.until_terminal(default, 30)[-1].body
    assert err["code"] == "bad_request" and "reply_to" in err["message"]


def test_memory_stays_flat_under_a_stream_of_bad_requests(client: Client, daemon: Daemon):
    assert daemon.proc is not None
    proc = psutil.Process(daemon.proc.pid)
    bad = [
        b"\xff\xfe",
        b"[" * 60_000,
        b'{"prompt": 3}',
        b'{"prompt": "x", "unknown": 1}',
        b"y" * 200_000,
        json.dumps({"prompt": "x", "reply_to": "a/#", "id": "w"}).encode(),
    ]

    def round_of(n: int) -> None:
        topic = reply_topic(daemon)
        client.subscribe(topic)
        for i in range(n):
            client.publish(f"{daemon.prefix}/request", bad[i % len(bad)], response_topic=topic)
        for _ in range(n):
            client.next(topic, 30)

    round_of(60)  # warm-up: allocator pools, parser caches
    before = proc.memory_info().rss
    round_of(240)
    grown_mib = (proc.memory_info().rss - before) / 2**20
    assert grown_mib < 8, f"RSS grew {grown_mib:.1f} MiB over 240 bad requests"
    still_serving(client, daemon)
