"""Fleet mode: several nodes serve one shared request topic (docs/FLEET.md).

The topic strings and the hand-back decision are checked alone; then two real daemons on the
real model share a group on a real mosquitto: each request to the group is answered once, each
node still answers on its own topic, and a node busy on a long generation hands a short request
to the free one.
"""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon import config
from daemon.config import LimitsConfig
from daemon.engine.admission import backlog_seconds
from daemon.frontends.mqtt import FLEET_HOPS, Transport
from daemon.frontends.mqtt_door import MqttFrontDoor
from daemon.frontends.mqtt_messages import Incoming, hops_of, parse_request
from daemon.frontends.topics import Topics
from daemon.reload import plan_reload
from daemon.requests import Rejection
from tests.helpers import Broker, Client, Daemon, poll

TOPICS = Topics("edgellm", "kitchen", "house")


# -- topics, config, decisions (no broker) ---------------------------------------------------


def test_fleet_topics_are_built_in_one_scheme():
    assert TOPICS.fleet_request == "edgellm/fleet/house/request"
    assert TOPICS.fleet_client_request("alice") == "edgellm/fleet/house/request/alice"
    assert TOPICS.fleet_shares == [
        "$share/house/edgellm/fleet/house/request",
        "$share/house/edgellm/fleet/house/request/+",
    ]
    assert TOPICS.fleet_cancels == ["edgellm/fleet/house/cancel", "edgellm/fleet/house/cancel/+"]
    assert TOPICS.fleet_replies == "edgellm/fleet/house/response/#"
    assert TOPICS.fleet_response_for("alice", "q1") == "edgellm/fleet/house/response/alice/q1"
    assert TOPICS.fleet_response_for("", "q1") == "edgellm/fleet/house/response/q1"
    # The node's own topics are unchanged by fleet mode.
    assert TOPICS.request == "edgellm/kitchen/request"


def test_fleet_topics_name_their_client_and_nothing_else():
    assert TOPICS.fleet_client_of("edgellm/fleet/house/request") == ""
    assert TOPICS.fleet_client_of("edgellm/fleet/house/request/bob") == "bob"
    assert TOPICS.fleet_client_of("edgellm/fleet/house/cancel/bob", "cancel") == "bob"
    assert TOPICS.fleet_client_of("edgellm/fleet/house/request/bob/x") is None
    assert TOPICS.fleet_client_of("edgellm/fleet/garage/request") is None
    assert TOPICS.fleet_client_of("edgellm/kitchen/request") is None
    assert TOPICS.client_of("edgellm/fleet/house/request") is None
    off = Topics("edgellm", "kitchen")
    assert off.fleet_client_of("edgellm/fleet/house/request") is None
    with pytest.raises(ValueError):
        _ = off.fleet_request


def test_fleet_is_off_by_default_and_checked():
    assert config.parse({}).fleet.group is None
    assert config.parse({"fleet": {"group": "house"}}).fleet.group == "house"
    for bad in ({"group": "a/b"}, {"group": "+"}, {"max_hops": -1}, {"groop": "x"}):
        with pytest.raises(config.ConfigError, match="fleet"):
            config.parse({"fleet": bad})
    with pytest.raises(config.ConfigError, match="node_id 'fleet'"):
        config.parse({"node_id": "fleet", "fleet": {"group": "house"}})


def test_fleet_keys_need_a_restart():
    old = config.parse({})
    new = config.parse({"fleet": {"group": "house", "start_within_s": 2, "max_hops": 1}})
    plan = plan_reload(old, new)
    assert plan.applied == ()
    assert set(plan.needs_restart) == {"fleet.group", "fleet.start_within_s", "fleet.max_hops"}


def test_a_fleet_request_without_a_reply_address_is_answered_in_the_group_tree():
    msg = Incoming(b"hi", client="alice", fleet_hops=0)
    assert msg.default_reply(TOPICS, "q1") == "edgellm/fleet/house/response/alice/q1"
    own = Incoming(b"hi", client="alice")
    assert own.default_reply(TOPICS, "q1") == "edgellm/kitchen/response/alice/q1"


def test_a_session_request_on_the_fleet_topic_is_refused_with_the_way_out():
    body = b'{"id": "q1", "prompt": "and tomorrow?", "session": "s1"}'
    got = parse_request(Incoming(body, client="alice", fleet_hops=0), TOPICS, LimitsConfig())
    assert isinstance(got, Rejection) and got.code == "bad_request"
    assert "own request topic" in got.message and got.reply is not None
    own = parse_request(Incoming(body, client="alice"), TOPICS, LimitsConfig())
    assert not isinstance(own, Rejection) and own.session == "s1"


def test_hops_are_read_from_the_user_property():
    assert hops_of(None) == 0
    assert hops_of([("other", "5"), (FLEET_HOPS, "2")]) == 2
    assert hops_of([(FLEET_HOPS, "x")]) == 0


class _Job:
    def __init__(self, estimate_s: float | None, started_at: float | None = None):
        self.estimate_s = estimate_s
        self.started_at = started_at


def test_backlog_is_what_runs_plus_what_waits():
    assert backlog_seconds(None, [], 10.0) == 0.0
    assert backlog_seconds(_Job(5.0, 8.0), [_Job(1.0)], 10.0) == pytest.approx(4.0)
    assert backlog_seconds(_Job(1.0, 0.0), [], 10.0) == 0.0  # overran its estimate
    assert backlog_seconds(_Job(None, 8.0), [], 10.0) is None  # no speed measured yet
    assert backlog_seconds(None, [_Job(None)], 10.0) is None


class _Engine:
    def __init__(self, backlog: float | None):
        self.backlog = backlog

    def backlog_s(self) -> float | None:
        return self.backlog


class _Intake:
    """Intake's two attributes the hand-back decision reads; the request itself is not needed."""

    def __init__(self, backlog: float | None, accepting: bool = True):
        self.engine = _Engine(backlog)
        self.accepting = accepting
        self.taken: list[Any] = []

    def take(self, req: Any, _answers: Any) -> None:
        self.taken.append(req)


class _Transport:
    def __init__(self) -> None:
        self.handed_back: list[Incoming] = []

    def hand_back(self, msg: Incoming) -> None:
        self.handed_back.append(msg)


@pytest.mark.parametrize(
    ("backlog", "accepting", "hops", "handed_back"),
    [
        (0.0, True, 0, False),  # idle: take it
        (0.5, True, 0, False),  # starts within fleet.start_within_s (1 s)
        (30.0, True, 0, True),  # busy on a long generation: give it back
        (None, True, 0, True),  # busy, no estimate yet: give it back
        (30.0, True, 3, False),  # handed back max_hops times: every node is busy, take it
        (0.0, False, 0, True),  # shutting down: give it back
        (30.0, True, None, False),  # a request to the node's own topic is always its own
    ],
)
def test_a_node_hands_back_what_it_cannot_start_soon(
    backlog: float | None, accepting: bool, hops: int | None, handed_back: bool
):
    cfg = config.parse({"fleet": {"group": "house"}})
    intake = _Intake(backlog, accepting)
    door = MqttFrontDoor(cfg, TOPICS, intake, Counter())  # type: ignore[arg-type]
    transport = _Transport()
    door.transport = transport  # type: ignore[assignment]
    door.on_request(
        Incoming(b"hello", "edgellm/kitchen/response/x", None, time.monotonic(), None, "", hops)
    )
    assert bool(transport.handed_back) == handed_back
    assert bool(intake.taken) == (not handed_back and accepting)


# -- the transport on a real broker (no model) -----------------------------------------------


@pytest.mark.parametrize(("protocol", "serves_group"), [("5", True), ("3.1.1", False)])
def test_the_transport_joins_the_group_over_mqtt5_only(
    broker: Broker, client: Client, protocol: str, serves_group: bool
):
    cfg = config.parse(
        {
            "mqtt": {"host": broker.host, "port": broker.port, "protocol": protocol},
            "fleet": {"group": "house"},
        }
    )
    topics = Topics("edgellm", f"n{uuid.uuid4().hex[:6]}", f"g{uuid.uuid4().hex[:6]}")
    got: queue.Queue[Incoming] = queue.Queue()
    transport = Transport(
        cfg.mqtt, topics, f"edgellm-{topics.node_id}", None, got.put, lambda *_a: None, b"off"
    )
    transport.start()
    try:
        poll(transport.ready.is_set, 10, "the SUBACK")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "r/q1"
        props.CorrelationData = b"c1"
        props.UserProperty = [(FLEET_HOPS, "1")]
        client.c.publish(topics.fleet_client_request("alice"), b"hi", 1, properties=props)
        client.publish(topics.request, "own")  # the node's own topic, served either way
        arrived = {m.payload: m for m in (got.get(timeout=5) for _ in range(1 + serves_group))}
        assert arrived[b"own"].fleet_hops is None
        if not serves_group:
            with pytest.raises(queue.Empty):  # the group's request never reaches a 3.1.1 node
                got.get(timeout=0.5)
            return
        first = arrived[b"hi"]
        assert (first.payload, first.client, first.fleet_hops) == (b"hi", "alice", 1)
        assert (first.response_topic, first.correlation) == ("r/q1", b"c1")
        # Handed back, it reaches the group again (here its only member) one hop further on.
        transport.hand_back(first)
        again = got.get(timeout=5)
        assert (again.payload, again.client, again.fleet_hops) == (b"hi", "alice", 2)
        assert (again.response_topic, again.correlation) == ("r/q1", b"c1")
    finally:
        transport.stop()


# -- two real nodes in one group ---------------------------------------------------------------

GROUP = f"g{uuid.uuid4().hex[:6]}"
FLEET_SETTINGS = {
    "fleet": {"group": GROUP},
    # One thread each, no start-up sweep: two nodes on a small machine, as in bench/fleet.py.
    "model": {"n_threads": 1},
    "governor": {"thread_sweep": False},
}
SHORT = {"prompt": "Say hi.", "max_tokens": 8, "temperature": 0}
LONG = {
    "prompt": "Write a very long story about a dragon who learns to bake bread.",
    "max_tokens": 400,
    "temperature": 0,
    "stream": True,
}


@pytest.fixture(scope="module")
def fleet(
    broker: Broker, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Daemon]]:
    workdir = tmp_path_factory.mktemp("fleet")
    nodes = [Daemon(broker, workdir, settings=FLEET_SETTINGS) for _ in range(2)]
    for d in nodes:
        d.start(wait_online=False)  # both load at once
    try:
        for d in nodes:
            d.wait_status("online", timeout=120)
        yield nodes
    finally:
        for d in nodes:
            d.stop()


@pytest.fixture
def replies(client: Client) -> str:
    root = f"edgellm/fleet/{GROUP}/response/test{uuid.uuid4().hex[:6]}"
    client.subscribe(f"{root}/#")
    return root


def send(client: Client, topic: str, root: str, body: dict[str, Any]) -> str:
    rid = uuid.uuid4().hex[:10]
    client.publish(topic, json.dumps({"id": rid, **body}), f"{root}/{rid}", rid.encode())
    return rid


def terminals(client: Client, root: str, n: int, timeout: float = 180) -> dict[str, list[dict]]:
    """Terminal replies per request id until n ids have one (then a quiet second for extras)."""
    got: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout
    while len(got) < n:
        reply = client.next(f"{root}/#", max(0.1, deadline - time.monotonic()))
        if reply.body.get("type") in ("done", "error"):
            assert reply.correlation == reply.topic.rsplit("/", 1)[-1].encode()
            got.setdefault(reply.body["id"], []).append(reply.body)
    for extra in client.quiet(f"{root}/#", 1.0):
        if extra.body.get("type") in ("done", "error"):
            got.setdefault(extra.body["id"], []).append(extra.body)
    return got


@pytest.mark.model
def test_the_group_answers_each_shared_request_once(
    fleet: list[Daemon], client: Client, replies: str
):
    for d in fleet:
        status = d.wait_status("online", timeout=5)
        assert status["fleet"] == {
            "group": GROUP,
            "request_topic": f"edgellm/fleet/{GROUP}/request",
        }
    shared = f"edgellm/fleet/{GROUP}/request"
    ids = [send(client, shared, replies, SHORT) for _ in range(8)]
    got = terminals(client, replies, len(ids))
    assert set(got) == set(ids)
    assert all(len(v) == 1 for v in got.values()), got  # exactly once each
    assert all(v[0]["type"] == "done" for v in got.values()), got
    # Both members served: the broker shares the subscription between them.
    assert {v[0]["node"] for v in got.values()} == {d.node_id for d in fleet}


@pytest.mark.model
def test_each_node_still_answers_on_its_own_topic(
    fleet: list[Daemon], client: Client, replies: str
):
    for d in fleet:
        rid = send(client, f"{d.prefix}/request", replies, SHORT)
        got = terminals(client, replies, 1)
        assert got[rid][0]["node"] == d.node_id


@pytest.mark.model
def test_a_short_request_goes_to_the_free_node(fleet: list[Daemon], client: Client, replies: str):
    busy, free = fleet
    long_id = send(client, f"{busy.prefix}/request", replies, LONG)
    # Running (not waiting) once its first token is out.
    first = client.next(f"{replies}/#", 60)
    assert first.body.get("type") == "delta" and first.body["id"] == long_id
    shared = f"edgellm/fleet/{GROUP}/request"
    answered = []
    # In turn: mosquitto would have handed every other one to the busy node (bench/fleet_broker).
    for _ in range(3):
        rid = send(client, shared, replies, SHORT)
        deadline = time.monotonic() + 60
        while True:
            reply = client.next(f"{replies}/#", max(0.1, deadline - time.monotonic()))
            if reply.body.get("type") in ("done", "error") and reply.body["id"] == rid:
                answered.append(reply.body)
                break
            assert reply.body["id"] == long_id, reply.body  # only the long one's deltas between
            assert reply.body.get("type") == "delta", (
                "the long generation ended before the short request's reply: the short one "
                "waited behind it (or the story was too short to keep the node busy)"
            )
    assert [b["node"] for b in answered] == [free.node_id] * 3, answered
    assert all(b["type"] == "done" for b in answered), answered
    assert all(b["timings"]["queue_ms"] < 1000 for b in answered), answered
    handed = [e for e in busy.log_events() if e.get("event") == "fleet_hand_back"]
    assert handed, "the busy node never handed a request back"
    # A fleet cancel reaches every member; the one running the request stops it.
    client.publish(f"edgellm/fleet/{GROUP}/cancel", json.dumps({"id": long_id}))
    end = terminal_of(client, replies, long_id)
    assert end.get("code") == "cancelled" and end["node"] == busy.node_id, end


def terminal_of(client: Client, root: str, rid: str, timeout: float = 60) -> dict[str, Any]:
    """The terminal reply of request rid (skipping its deltas)."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.next(f"{root}/#", max(0.1, deadline - time.monotonic())).body
        if body.get("id") == rid and body.get("type") in ("done", "error"):
            return body
