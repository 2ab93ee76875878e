"""Request parsing: every malformed payload becomes a clear Rejection, never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import LimitsConfig
from daemon.frontends.mqtt_messages import Incoming, parse_cancel, parse_request
from daemon.frontends.topics import Topics
from daemon.requests import ErrorCode, Rejection, ReplyAddress, Request, StreamMode, ToolCall

TOPICS = Topics("edgellm", "node1")
LIMITS = LimitsConfig()


def parse(
    payload: bytes | str | dict, response_topic: str | None = None, correlation: bytes | None = None
) -> Request | Rejection:
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    return parse_request(Incoming(payload, response_topic, correlation, 100.0), TOPICS, LIMITS)


def test_plain_text_is_a_prompt_with_defaults_and_default_reply_topic():
    req = parse("hello there")
    assert isinstance(req, Request)
    assert req.prompt == "hello there"
    assert req.messages is None
    assert req.stream is StreamMode.OFF
    assert req.reply == ReplyAddress(f"edgellm/node1/response/{req.id}")
    assert req.deadline == 100.0 + LIMITS.request_timeout_s


def test_v5_response_topic_wins_over_reply_to_and_keeps_correlation():
    req = parse({"prompt": "hi", "reply_to": "mine/replies"}, "v5/replies", b"\x01\x02")
    assert isinstance(req, Request)
    assert req.reply == ReplyAddress("v5/replies", b"\x01\x02")


def test_reply_to_used_without_v5_properties():
    req = parse({"prompt": "hi", "id": "abc-1", "reply_to": "mine/replies"})
    assert isinstance(req, Request)
    assert req.id == "abc-1"
    assert req.reply == ReplyAddress("mine/replies")


def test_full_chat_request():
    req = parse(
        {
            "id": "r1",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ],
            "max_tokens": 20,
            "temperature": 0,
            "top_p": 1,
            "stop": "\n",
            "seed": 7,
            "stream": "sentences",
        }
    )
    assert isinstance(req, Request)
    assert [m.role for m in req.messages or ()] == ["system", "user"]
    assert (req.max_tokens, req.temperature, req.top_p, req.seed) == (20, 0.0, 1.0, 7)
    assert req.stop == ("\n",)
    assert req.stream is StreamMode.SENTENCES


@pytest.mark.parametrize(
    ("payload", "code", "fragment"),
    [
        (b"", ErrorCode.BAD_REQUEST, "empty payload"),
        (b"   \n", ErrorCode.BAD_REQUEST, "empty prompt"),
        (b"\xff\xfe\x00binary", ErrorCode.BAD_REQUEST, "UTF-8"),
        (b"{not json", ErrorCode.BAD_REQUEST, "invalid JSON"),
        (b"[1, 2]", ErrorCode.BAD_REQUEST, "must be an object"),
        (b'{"prompt": "x", "colour": "red"}', ErrorCode.BAD_REQUEST, "colour: unknown field"),
        (b'{"prompt": 5}', ErrorCode.BAD_REQUEST, "prompt"),
        (b'{"prompt": "x", "max_tokens": "ten"}', ErrorCode.BAD_REQUEST, "max_tokens"),
        (b'{"prompt": "x", "max_tokens": 0}', ErrorCode.BAD_REQUEST, "max_tokens"),
        (b'{"prompt": "x", "temperature": 9}', ErrorCode.BAD_REQUEST, "temperature"),
        (b'{"prompt": "x", "stream": "yes"}', ErrorCode.BAD_REQUEST, "stream"),
        (b'{"prompt": "x", "stop": ["a", ""]}', ErrorCode.BAD_REQUEST, "empty strings"),
        (b'{"prompt": "x", "id": "has space"}', ErrorCode.BAD_REQUEST, "id"),
        (
            b'{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}',
            ErrorCode.BAD_REQUEST,
            "exactly one",
        ),
        (b'{"max_tokens": 5}', ErrorCode.BAD_REQUEST, "exactly one"),
        (b'{"messages": [{"role": "wizard", "content": "y"}]}', ErrorCode.BAD_REQUEST, "role"),
        (b'{"prompt": "x", "reply_to": "a/+/b"}', ErrorCode.BAD_REQUEST, "reply_to"),
        (b'{"prompt": "x\\u0000"}', ErrorCode.BAD_REQUEST, "NUL"),
        (b"x" * (LIMITS.max_payload_bytes + 1), ErrorCode.TOO_LONG, "limit"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_clear_code(payload, code, fragment):
    rej = parse(payload, "replies/here", b"c")
    assert isinstance(rej, Rejection), rej
    assert rej.code is code
    assert fragment in rej.message
    # A v5 response topic always gives the rejection somewhere to go.
    assert rej.reply == ReplyAddress("replies/here", b"c")


def test_rejection_without_any_reply_address_has_none():
    rej = parse(b"{broken")
    assert isinstance(rej, Rejection)
    assert rej.reply is None


def test_rejection_finds_reply_to_and_id_in_an_invalid_body():
    rej = parse({"id": "q9", "reply_to": "back/here", "prompt": 3})
    assert isinstance(rej, Rejection)
    assert rej.id == "q9"
    assert rej.reply == ReplyAddress("back/here")


def test_rejection_with_only_an_id_answers_on_the_default_topic():
    rej = parse({"id": "q10", "prompt": "x", "bogus": 1})
    assert isinstance(rej, Rejection)
    assert rej.reply == ReplyAddress("edgellm/node1/response/q10")


def test_wildcard_response_topic_is_not_used():
    rej = parse(b"{bad", "a/#")
    assert isinstance(rej, Rejection)
    assert rej.reply is None


def test_limits_on_messages_and_stops():
    limits = LimitsConfig(max_messages=2, max_stop=1)
    msgs = [{"role": "user", "content": "a"}] * 3
    rej = parse_request(Incoming(json.dumps({"messages": msgs}).encode(), "r"), TOPICS, limits)
    assert isinstance(rej, Rejection) and "limit is 2" in rej.message
    rej = parse_request(Incoming(b'{"prompt": "a", "stop": ["x", "y"]}', "r"), TOPICS, limits)
    assert isinstance(rej, Rejection) and "limit is 1" in rej.message


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_parse_without_raising(payload):
    result = parse(payload, "r")
    assert isinstance(result, Request | Rejection)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "prompt",
                "messages",
                "max_tokens",
                "temperature",
                "top_p",
                "stop",
                "seed",
                "stream",
                "reply_to",
                "system",
                "grammar",
                "tools",
                "tool_choice",
                "extra",
            ]
        ),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False)
            | st.text(max_size=20),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=8,
        ),
    )
)
def test_any_json_object_parses_without_raising(body):
    result = parse(json.dumps(body), "r")
    assert isinstance(result, Request | Rejection)
    if isinstance(result, Rejection):
        assert result.message and result.reply is not None


def test_tools_grammar_and_tool_messages_become_request_fields():
    weather = {"type": "function", "function": {"name": "get_weather", "description": "d"}}
    call = {"id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}
    req = parse(
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "18 C", "tool_call_id": "c1"},
            ],
            "tools": [weather],
            "tool_choice": "required",
        }
    )
    assert isinstance(req, Request)
    assert req.tool_choice == "required" and req.tools is not None
    assert req.tools[0]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert req.messages is not None
    assert req.messages[1].tool_calls == (ToolCall("c1", "get_weather", {"city": "Paris"}),)
    assert (req.messages[2].role, req.messages[2].tool_call_id) == ("tool", "c1")
    req = parse({"prompt": "yes?", "grammar": 'root ::= "yes"', "tools": []})
    assert isinstance(req, Request) and req.grammar == 'root ::= "yes"' and req.tools is None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"id": "abc"}', "abc"),
        (b"abc", "abc"),
        (b" abc\n", "abc"),
        (b"{}", None),
        (b'{"id": 5}', None),
        (b"\xff", None),
        (b"a b", None),
        (b"", None),
    ],
)
def test_parse_cancel(payload, expected):
    assert parse_cancel(payload) == expected
