"""The reliability promises (docs/RELIABILITY.md) against a real daemon, broker and model."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers import Broker, Client, Daemon, poll

pytestmark = pytest.mark.model

LONG = {"prompt": "Write a long story about a lighthouse keeper.", "temperature": 0}


def reply_tree(d: Daemon, tag: str = "") -> str:
    return f"{d.prefix}/response/rel{tag}{uuid.uuid4().hex[:8]}"


def send(client: Client, d: Daemon, body: dict, topic: str, request_topic: str = "") -> None:
    client.publish(request_topic or f"{d.prefix}/request", json.dumps(body), response_topic=topic)


def terminal(client: Client, topic: str, timeout: float = 60) -> dict:
    return client.until_terminal(topic, timeout)[-1].body


def logged(d: Daemon, event: str, count: int, timeout: float = 10, **match: object) -> list[dict]:
    """The daemon's log events named event (matching fields), once there are count of them:
    a log line is written just after the reply it describes is published."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            e
            for e in d.log_events()
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture(scope="module")
def small_queue(broker: Broker, model_path: Path, tmp_path_factory) -> Iterator[Daemon]:
    """One thread, no sweep, a queue of 3: waiting and ordering are easy to provoke."""
    d = Daemon(
        broker,
        tmp_path_factory.mktemp("rel"),
        settings={
            "model": {"n_threads": 1},
            "governor": {"thread_sweep": False},
            "limits": {"queue_size": 3},
        },
    ).start()
    yield d
    d.stop()


def test_a_duplicate_runs_the_model_once_and_gets_the_same_reply(client: Client, daemon: Daemon):
    topic = reply_tree(daemon)
    client.subscribe(topic)
    body = {"id": f"dup-{uuid.uuid4().hex[:6]}", "prompt": "Say hi.", "max_tokens": 8}
    send(client, daemon, body, topic)
    send(client, daemon, body, topic)  # a QoS 1 redelivery while the first runs
    first = terminal(client, topic)
    assert first["type"] == "done"
    assert client.quiet(topic, 1.0) == []  # the in-flight copy was dropped, not answered
    send(client, daemon, body, topic)  # a retry after the answer: the same answer again
    again = terminal(client, topic)
    assert again == first
    assert len(logged(daemon, "request", 1, id=body["id"])) == 1
    dups = logged(daemon, "request_duplicate", 2, id=body["id"])
    assert [e["finished"] for e in dups] == [False, True]


def test_the_same_id_from_another_client_is_not_a_duplicate(client: Client, daemon: Daemon):
    topic_a, topic_b = reply_tree(daemon, "a"), reply_tree(daemon, "b")
    client.subscribe(topic_a)
    client.subscribe(topic_b)
    body = {"id": f"same-{uuid.uuid4().hex[:6]}", "prompt": "Say hi.", "max_tokens": 4}
    send(client, daemon, body, topic_a, f"{daemon.prefix}/request/alice")
    assert terminal(client, topic_a)["type"] == "done"
    send(client, daemon, body, topic_b, f"{daemon.prefix}/request/bob")
    assert terminal(client, topic_b)["type"] == "done"
    ran = logged(daemon, "request", 2, id=body["id"])
    assert sorted(e["client"] for e in ran) == ["alice", "bob"]


def test_interactive_requests_overtake_waiting_background_ones(client: Client, small_queue):
    d = small_queue
    topic = reply_tree(d)
    client.subscribe(f"{topic}/#")
    send(client, d, {**LONG, "id": "long", "max_tokens": 120, "stream": True}, f"{topic}/long")
    client.next(f"{topic}/#", 30)  # wait for proof the long one runs (streamed below)
    for rid, prio in (("bg", "background"), ("fg", "interactive")):
        send(
            client,
            d,
            {"id": rid, "prompt": "Say hi.", "max_tokens": 4, "priority": prio},
            f"{topic}/{rid}",
        )
    order: list[str] = []
    while len(order) < 3:
        reply = client.next(f"{topic}/#", 60)
        if reply.body.get("type") in ("done", "error"):
            order.append(reply.body["id"])
    assert order == ["long", "fg", "bg"]


@pytest.fixture
def long_running(client: Client, small_queue: Daemon) -> Iterator[str]:
    """A long generation holding the worker; cancelled afterwards."""
    topic = reply_tree(small_queue)
    client.subscribe(topic)
    rid = f"hold-{uuid.uuid4().hex[:6]}"
    send(client, small_queue, {**LONG, "id": rid, "max_tokens": 400, "stream": True}, topic)
    client.next(topic, 30)  # its first delta: it is running
    yield topic
    client.publish(f"{small_queue.prefix}/cancel", json.dumps({"id": rid}))
    client.until_terminal(topic, 60)


def test_a_deadline_that_passes_in_the_queue_is_answered_timeout_not_run_late(
    client: Client, small_queue: Daemon, long_running: str
):
    topic = reply_tree(small_queue)
    client.subscribe(topic)
    sent = time.monotonic()
    send(client, small_queue, {"prompt": "Say hi.", "max_tokens": 4, "deadline_ms": 400}, topic)
    reply = terminal(client, topic, 30)
    assert reply["type"] == "error" and reply["code"] == "timeout"
    # Answered while the long generation still runs, not after it.
    assert time.monotonic() - sent < 5


def test_the_mqtt_v5_message_expiry_is_a_deadline(
    client: Client, small_queue: Daemon, long_running: str
):
    topic = reply_tree(small_queue)
    client.subscribe(topic)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = topic
    props.MessageExpiryInterval = 1
    body = json.dumps({"prompt": "Say hi.", "max_tokens": 4})
    client.c.publish(f"{small_queue.prefix}/request", body, qos=1, properties=props)
    reply = terminal(client, topic, 30)
    assert reply["code"] == "timeout"


def test_replies_carry_a_message_expiry(client: Client, daemon: Daemon):
    topic = reply_tree(daemon)
    got: list = []
    arrived = threading.Event()

    def on_message(_c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        got.append(getattr(msg.properties, "MessageExpiryInterval", None))
        arrived.set()

    client.c.message_callback_add(topic, on_message)
    client.subscribe(topic)
    send(client, daemon, {"prompt": "Say hi.", "max_tokens": 2}, topic)
    assert arrived.wait(30)
    # The broker passes on what is left of the daemon's 600 s.
    assert got[0] is not None and 590 <= got[0] <= 600


def test_every_accepted_request_gets_exactly_one_terminal_reply_under_mixed_load(
    broker: Broker, small_queue: Daemon
):
    """Three clients at once: plain, token and sentence streams, cancels, a full queue (busy),
    background and interactive. Every request ends in one done or error, never two."""
    d = small_queue
    clients = [Client(broker) for _ in range(3)]
    topic = reply_tree(d)
    counts: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    lock = threading.Lock()
    ids: list[str] = []

    def on_message(_c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        body = json.loads(msg.payload)
        if body.get("type") in ("done", "error"):
            with lock:
                counts[body["id"]] += 1
                codes[body.get("code", "done")] += 1

    for n, c in enumerate(clients):
        c.c.message_callback_add(f"{topic}/c{n}/#", on_message)
        c.subscribe(f"{topic}/c{n}/#")

    def worker(n: int, c: Client) -> None:
        for i in range(12):
            rid = f"m{n}-{i}"
            with lock:
                ids.append(rid)
            stream = [False, True, "sentences"][i % 3]
            body = {
                "id": rid,
                "prompt": "Tell me about the sea.",
                "max_tokens": 6 + i % 10,
                "stream": stream,
                "priority": ["interactive", "background"][i % 2],
            }
            c.publish(
                f"{d.prefix}/request/c{n}", json.dumps(body), response_topic=f"{topic}/c{n}/{rid}"
            )
            if i % 4 == 3:
                c.publish(f"{d.prefix}/cancel/c{n}", json.dumps({"id": rid}))

    threads = [threading.Thread(target=worker, args=(n, c)) for n, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def all_answered() -> bool:
        with lock:
            return len(counts) == len(ids)

    with contextlib.suppress(TimeoutError):  # the asserts below say which request is missing
        poll(all_answered, 120, "a terminal reply to every request", every=0.1)
    time.sleep(0.5)  # not a wait for anything: the window in which a second terminal would show
    for c in clients:
        c.close()
    assert sorted(counts) == sorted(ids), "a request got no terminal reply"
    assert set(counts.values()) == {1}, "a request got more than one terminal reply"
    assert codes["done"] > 0 and codes["busy"] + codes["cancelled"] > 0
    assert set(codes) <= {"done", "busy", "cancelled"}


# -- misuse: reply topics, rate limits, allow-list, policy --------------------------------------


def test_a_reply_topic_outside_the_reply_tree_gets_nothing_there(client: Client, daemon: Daemon):
    """The confused deputy: the daemon must not write model output onto a device's topic."""
    device = "zigbee2mqtt/front_door/set"
    rid = f"deputy-{uuid.uuid4().hex[:6]}"
    client.subscribe(device)
    default = f"{daemon.prefix}/response/{rid}"
    client.subscribe(default)
    client.publish(
        f"{daemon.prefix}/request", json.dumps({"id": rid, "prompt": "open", "reply_to": device})
    )
    err = terminal(client, default, 30)
    assert err["code"] == "bad_request" and "reply topic" in err["message"]
    client.subscribe(f"{default}-v5")
    send(client, daemon, {"id": f"{rid}-v5", "prompt": "open"}, device)  # as Response Topic
    assert terminal(client, f"{default}-v5", 30)["code"] == "bad_request"
    assert client.quiet(device, 1.0) == []
    assert len(logged(daemon, "reply_topic_refused", 2)) >= 2


@pytest.fixture(scope="module")
def guarded(broker: Broker, model_path: Path, tmp_path_factory) -> Iterator[Daemon]:
    d = Daemon(
        broker,
        tmp_path_factory.mktemp("guarded"),
        settings={
            "governor": {"thread_sweep": False},
            "policy": {
                "clients_allowed": ["alice", "bob", "carol", "dave"],
                "blocked_terms": ["Voldemort", "e"],
                "classifier": "tests.classifiers:Keyword",
                "rate_limit": {"requests_per_min": 6, "burst": 2, "tokens_per_min": None},
            },
        },
    ).start()
    yield d
    d.stop()


def test_a_flooding_client_is_rate_limited_and_another_is_not(client: Client, guarded: Daemon):
    d = guarded
    topic = reply_tree(d)
    client.subscribe(f"{topic}/#")
    for i in range(4):
        send(
            client,
            d,
            {"id": f"a{i}", "prompt": "Hi", "max_tokens": 1},
            f"{topic}/a{i}",
            f"{d.prefix}/request/alice",
        )
    replies: dict[str, dict] = {}
    while len(replies) < 4:
        r = client.next(f"{topic}/#", 60).body
        if r.get("type") in ("done", "error"):
            replies[r["id"]] = r
    limited = [r for r in replies.values() if r.get("code") == "rate_limited"]
    assert len(limited) == 2
    assert all(0 < r["retry_after_s"] <= 10 for r in limited)
    send(
        client,
        d,
        {"id": "b0", "prompt": "Hi", "max_tokens": 1},
        f"{topic}/b0",
        f"{d.prefix}/request/bob",
    )
    assert terminal(client, f"{topic}/b0").get("code") != "rate_limited"


def test_clients_not_on_the_allow_list_are_refused(client: Client, guarded: Daemon):
    d = guarded
    for who, topic_level in (("mallory", "/mallory"), ("unnamed", "")):
        topic = reply_tree(d, who)
        client.subscribe(topic)
        send(
            client, d, {"prompt": "Hi", "max_tokens": 1}, topic, f"{d.prefix}/request{topic_level}"
        )
        err = terminal(client, topic)
        assert err["code"] == "policy" and "client" in err["message"]


def test_a_blocked_term_in_the_prompt_is_refused(client: Client, guarded: Daemon):
    topic = reply_tree(guarded)
    client.subscribe(topic)
    body = {"prompt": "Tell me about VOLDEMORT", "max_tokens": 4}
    send(client, guarded, body, topic, f"{guarded.prefix}/request/carol")
    err = terminal(client, topic)
    assert err["code"] == "policy"


def test_a_blocked_term_in_the_output_stops_the_stream_before_it(client: Client, guarded: Daemon):
    """'e' is in any English sentence of some length: the stream must stop before the first."""
    topic = reply_tree(guarded)
    client.subscribe(topic)
    body = {"prompt": "Say a long story about a cat.", "max_tokens": 60, "stream": True}
    send(client, guarded, body, topic, f"{guarded.prefix}/request/dave")
    replies = client.until_terminal(topic, 60)
    end = replies[-1].body
    assert end["code"] == "policy"
    streamed = "".join(r.body["text"] for r in replies[:-1])
    assert "e" not in streamed.casefold() and "e" not in end["text"].casefold()
    assert streamed == end["text"]


def test_the_safety_classifier_seam_is_asked(client: Client, guarded: Daemon):
    topic = reply_tree(guarded)
    client.subscribe(topic)
    body = {"prompt": "Draw a CANNON", "max_tokens": 4}
    send(client, guarded, body, topic, f"{guarded.prefix}/request/carol")
    err = terminal(client, topic)
    assert err["code"] == "policy" and "classifier" in err["message"]


def test_a_client_cancels_only_its_own_requests(client: Client, small_queue: Daemon):
    d = small_queue
    topic = reply_tree(d)
    client.subscribe(topic)
    rid = f"mine-{uuid.uuid4().hex[:6]}"
    body = {**LONG, "id": rid, "max_tokens": 60, "stream": True}
    send(client, d, body, topic, f"{d.prefix}/request/alice")
    client.next(topic, 30)  # running
    client.publish(f"{d.prefix}/cancel/mallory", json.dumps({"id": rid}))
    client.publish(f"{d.prefix}/cancel", json.dumps({"id": rid}))
    client.publish(f"{d.prefix}/cancel/alice", json.dumps({"id": rid}))
    assert terminal(client, topic)["code"] == "cancelled"
    found = [e["found"] for e in logged(d, "cancel", 3, id=rid)]
    assert found == [False, False, True]


def test_a_named_clients_default_replies_go_under_its_name(client: Client, daemon: Daemon):
    rid = f"named-{uuid.uuid4().hex[:6]}"
    mine = f"{daemon.prefix}/response/alice/{rid}"
    client.subscribe(mine)
    client.publish(
        f"{daemon.prefix}/request/alice", json.dumps({"id": rid, "prompt": "Hi", "max_tokens": 2})
    )
    assert terminal(client, mine)["type"] == "done"
