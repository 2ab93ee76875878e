"""Hostile and broken payloads against the real daemon: each gets one clear error on the reply
address it names (or on <prefix>/<node>/response/<id>), the daemon keeps serving, and a stream
of them does not make it grow."""

from __future__ import annotations

import json
import uuid

import psutil
import pytest

from tests.helpers import Client, Daemon, Reply

pytestmark = pytest.mark.model

# The shared daemon's limits.max_payload_bytes is the default 64 KiB: the nesting cases stay
# under it so that they reach the JSON parser (over it they are `too_long` before parsing).
DEEP_LIST = b"[" * 60_000
DEEP_OBJECT = b'{"a":' * 13_000
TEN_MB = 10 * 2**20


def reply_topic(daemon: Daemon) -> str:
    return f"{daemon.prefix}/response/bad/{uuid.uuid4().hex}"


def ask_v5(client: Client, daemon: Daemon, payload: bytes, timeout: float = 30) -> list[Reply]:
    """Publish payload with an MQTT v5 Response Topic and correlation; every reply to the end."""
    topic = reply_topic(daemon)
    client.subscribe(topic)
    client.publish(f"{daemon.prefix}/request", payload, response_topic=topic, correlation=b"c-1")
    return client.until_terminal(topic, timeout)


def assert_one_error(replies: list[Reply], code: str) -> dict:
    assert len(replies) == 1, [r.body for r in replies]
    body = replies[0].body
    assert body["type"] == "error" and body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def assert_still_serving(client: Client, daemon: Daemon) -> None:
    assert daemon.alive()
    body = json.dumps({"prompt": "Say yes.", "max_tokens": 4, "temperature": 0, "seed": 1})
    done = ask_v5(client, daemon, body.encode(), timeout=60)[-1].body
    assert done["type"] == "done" and done["text"].strip(), done


@pytest.mark.parametrize(
    "payload",
    [
        b'{"prompt": "caf\xe9 \xff\xfe"}',  # Latin-1 bytes inside a JSON string
        b"\xc3\x28 plain text with a broken sequence",
        b'{"prompt": "x", "id": "\xed\xa0\x80"}',  # an encoded UTF-16 surrogate
    ],
    ids=["json-latin1", "plain-text", "surrogate"],
)
def test_invalid_utf8_is_a_bad_request(client: Client, daemon: Daemon, payload: bytes):
    replies = ask_v5(client, daemon, payload)
    assert_one_error(replies, "bad_request")
    assert replies[0].correlation == b"c-1"
    assert_still_serving(client, daemon)


@pytest.mark.parametrize("payload", [DEEP_LIST, DEEP_OBJECT], ids=["list", "object"])
def test_deeply_nested_json_is_a_bad_request(client: Client, daemon: Daemon, payload: bytes):
    """json.loads recurses once per level: past Python's limit it raises RecursionError, which
    must become an answer, not a dead handler."""
    assert len(payload) < 65536
    assert_one_error(ask_v5(client, daemon, payload), "bad_request")
    assert_still_serving(client, daemon)


def test_a_ten_megabyte_payload_is_too_long(client: Client, daemon: Daemon):
    # mosquitto's default max packet size (about 256 MiB) lets it through to the daemon.
    payload = json.dumps({"prompt": "x" * TEN_MB}).encode()
    err = assert_one_error(ask_v5(client, daemon, payload, timeout=60), "too_long")
    assert str(len(payload)) in err["message"]
    assert_still_serving(client, daemon)


@pytest.mark.parametrize(
    "reply_to",
    ["a/+/b", "a/#", "+", "#", "{prefix}/response/+/x", "{prefix}/response/#"],
    ids=["plus", "hash", "bare-plus", "bare-hash", "plus-in-tree", "hash-in-tree"],
)
def test_a_wildcard_reply_to_is_a_bad_request_on_the_id_topic(
    client: Client, client311: Client, daemon: Daemon, reply_to: str
):
    """A topic filter is not a topic: nothing can be published to it (paho refuses with an
    exception), inside the reply tree or not. The answer goes to the request's own id topic."""
    rid = f"wild-{uuid.uuid4().hex[:8]}"
    by_id = f"{daemon.prefix}/response/{rid}"
    client311.subscribe(by_id)
    body = {"id": rid, "prompt": "Hi", "reply_to": reply_to.format(prefix=daemon.prefix)}
    client311.publish(f"{daemon.prefix}/request", json.dumps(body))
    err = assert_one_error(client311.until_terminal(by_id, 30), "bad_request")
    assert err["id"] == rid and "reply_to" in err["message"]
    assert_still_serving(client, daemon)


# -- memory ------------------------------------------------------------------------------------


def malformed(i: int, daemon: Daemon) -> tuple[bytes, str | None]:
    """The i-th of a mix of bad requests: (payload, reply_to field or None for a v5 reply)."""
    rid = f"mem-{i}"
    kinds: list[tuple[bytes, str | None]] = [
        (b'{"prompt": "\xff\xfe\xfd"}', None),
        (DEEP_LIST, None),
        (DEEP_OBJECT, None),
        (b"x" * 100_000, None),  # too_long (a 10 MB one each time would make the test slow)
        (json.dumps({"id": rid, "prompt": "x", "reply_to": "a/+/b"}).encode(), "id"),
        (json.dumps({"id": rid, "prompt": "x", "temperature": "hot"}).encode(), None),
        (b"{not json at all", None),
        (bytes(range(256)), None),
    ]
    return kinds[i % len(kinds)]


def send_malformed(client: Client, daemon: Daemon, start: int, count: int) -> None:
    """Send count malformed requests and wait for every error reply, so that the daemon has
    finished with each before its memory is read."""
    topic = reply_topic(daemon)
    client.subscribe(f"{topic}/#")
    client.subscribe(f"{daemon.prefix}/response/+")
    for i in range(start, start + count):
        payload, addressed = malformed(i, daemon)
        if addressed == "id":
            client.publish(f"{daemon.prefix}/request", payload)
            reply = client.next(f"{daemon.prefix}/response/+", 30)
        else:
            client.publish(f"{daemon.prefix}/request", payload, response_topic=f"{topic}/{i}")
            reply = client.next(f"{topic}/#", 30)
        assert reply.body["type"] == "error", reply.body


def test_memory_stays_flat_under_a_stream_of_malformed_requests(client: Client, daemon: Daemon):
    proc = psutil.Process(daemon.proc.pid if daemon.proc else 0)
    send_malformed(client, daemon, 0, 80)  # warm-up: allocator pools, code paths, caches
    before = proc.memory_info().rss
    send_malformed(client, daemon, 80, 200)
    grown = proc.memory_info().rss - before
    assert grown < 4 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over 200 malformed requests"
    assert_still_serving(client, daemon)
