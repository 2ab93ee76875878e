"""Request fields of the reliability promises: priority, deadlines, the client level, depth."""

from __future__ import annotations

import json

import pytest

from daemon import config
from daemon.frontends.mqtt_messages import Incoming, parse_request
from daemon.frontends.topics import Topics
from daemon.requests import ErrorCode, Priority, Rejection, Request

LIMITS = config.load(None).limits  # request_timeout_s 120
TOPICS = Topics("edgellm", "kitchen")


def parse(body: dict | bytes, expiry: int | None = None, client: str = "") -> Request | Rejection:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(Incoming(payload, "r/t", None, 100.0, expiry, client), TOPICS, LIMITS)


def test_priority_defaults_to_interactive_and_accepts_background():
    assert parse({"prompt": "hi"}).priority is Priority.INTERACTIVE  # type: ignore[union-attr]
    req = parse({"prompt": "hi", "priority": "background"})
    assert isinstance(req, Request) and req.priority is Priority.BACKGROUND
    bad = parse({"prompt": "hi", "priority": "urgent"})
    assert isinstance(bad, Rejection) and "priority" in bad.message


@pytest.mark.parametrize(
    ("deadline_ms", "expiry", "allowed"),
    [(None, None, 120.0), (2500, None, 2.5), (None, 7, 7.0), (2500, 1, 1.0), (500_000, 300, 120.0)],
)
def test_the_deadline_is_the_tightest_of_timeout_deadline_ms_and_message_expiry(
    deadline_ms, expiry, allowed
):
    body = {"prompt": "hi"} | ({"deadline_ms": deadline_ms} if deadline_ms else {})
    req = parse(body, expiry)
    assert isinstance(req, Request)
    assert req.deadline == pytest.approx(100.0 + allowed)


def test_deadline_ms_must_be_positive():
    rej = parse({"prompt": "hi", "deadline_ms": 0})
    assert isinstance(rej, Rejection) and "deadline_ms" in rej.message


def test_the_client_level_travels_with_the_request():
    req = parse({"prompt": "hi"}, client="alice")
    assert isinstance(req, Request) and req.client == "alice"


@pytest.mark.parametrize("payload", [b"[" * 60_000, b'{"a":' * 12_000, b"[" * 2000 + b"]" * 2000])
def test_deeply_nested_json_is_a_bad_request_not_a_crash(payload):
    rej = parse(payload)
    assert isinstance(rej, Rejection) and rej.code is ErrorCode.BAD_REQUEST


def test_client_of_names_the_level_after_request():
    assert TOPICS.client_of("edgellm/kitchen/request") == ""
    assert TOPICS.client_of("edgellm/kitchen/request/alice") == "alice"
    assert TOPICS.client_of("edgellm/kitchen/request/alice/x") is None
    assert TOPICS.client_of("edgellm/kitchen/request/") is None
    assert TOPICS.client_of("edgellm/kitchen/cancel") is None
