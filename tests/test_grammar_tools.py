"""A client's GBNF grammar and tools over MQTT, on the real model: grammar replies match, bad
grammars (those that would crash llama.cpp too) are bad_request and the node goes on, tools
reach a template that takes them and come back as tool_calls."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from daemon.engine import gbnf
from tests.helpers import Client, Daemon
from tests.shapes import WEATHER

pytestmark = pytest.mark.model

ASK = "What is the weather in Paris?"


def ask(client: Client, d: Daemon, body: dict) -> list[dict]:
    """Every reply to one request, the terminal one last."""
    topic = f"{d.prefix}/response/test/{uuid.uuid4().hex}"
    client.subscribe(topic)
    client.publish(f"{d.prefix}/request", json.dumps(body), response_topic=topic)
    return [r.body for r in client.until_terminal(topic, 120)]


def done(client: Client, d: Daemon, body: dict) -> dict:
    reply = ask(client, d, body)[-1]
    assert reply["type"] == "done", reply
    return reply


def refused(client: Client, d: Daemon, body: dict, says: str) -> None:
    reply = ask(client, d, body)[-1]
    assert reply["type"] == "error" and reply["code"] == "bad_request", reply
    assert says in reply["message"]


@pytest.mark.parametrize("temperature", [0, 0.9])
def test_a_grammar_reply_matches_it(client: Client, daemon: Daemon, temperature):
    grammar = 'root ::= "The light is " ("on" | "off") "." | "Yes" | "No"'
    for prompt in ("Is the kitchen light on?", "Should I open the window?"):
        body = {"prompt": prompt, "grammar": grammar, "temperature": temperature}
        reply = done(client, daemon, {**body, "max_tokens": 16})
        assert re.fullmatch(r"The light is (on|off)\.|Yes|No", reply["text"]), reply["text"]
        assert "parsed" not in reply  # a grammar's reply need not be JSON


@pytest.mark.parametrize(
    ("grammar", "says"),
    [
        ("root ::= foo", "rule 'foo' is used but never defined"),
        ("root ::= [a-z", "not closed"),
        # Each of these crashes llama.cpp 0.3.36 once sampling starts (a NULL sampler, or a
        # grammar no token can continue): refused before it gets there.
        ('root ::= root "a"', "llama.cpp's parser refused it"),
        ('root ::= "\\x00"', "cannot be generated"),
        ('root ::= "a" [^\\x01-\\U0010FFFF]', "admits no character"),
        ("root ::= <[42]>", "token references"),
    ],
)
def test_a_bad_grammar_is_a_bad_request_and_the_node_goes_on(
    client: Client, daemon: Daemon, grammar, says
):
    refused(client, daemon, {"prompt": "Hi", "grammar": grammar}, says)
    assert done(client, daemon, {"prompt": "Hi", "max_tokens": 3})["type"] == "done"
    assert daemon.alive()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"grammar": 'root ::= "a"', "json_schema": {"type": "object"}}, "at most one"),
        ({"grammar": 'root ::= "' + "a" * gbnf.MAX_CHARS + '"'}, "grammar"),
        ({"grammar": ""}, "grammar"),
        ({"tools": {"name": "x"}}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0]"),
        ({"tools": [WEATHER] * 129}, "the limit is 128"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [WEATHER], "tool_choice": "required", "grammar": 'root ::= "a"'}, "constrains"),
    ],
)
def test_malformed_grammar_and_tool_fields_are_clear_errors(
    client: Client, daemon: Daemon, body, says
):
    refused(client, daemon, {"prompt": ASK, **body}, says)


def test_tool_messages_are_checked(client: Client, daemon: Daemon):
    call = {"id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}
    bad = [{"role": "user", "content": ASK, "tool_calls": [call]}]
    refused(client, daemon, {"messages": bad}, "only an assistant message")
    bad = [{"role": "user", "content": ASK, "tool_call_id": "c1"}]
    refused(client, daemon, {"messages": bad}, "only a tool message")


def test_tools_on_a_template_without_them_use_edgellms_format(client: Client, daemon: Daemon):
    """The bundled SmolLM2 template renders no tools: edgellm describes them itself, and a
    grammar makes a required call one that parses, to an offered tool."""
    body = {"prompt": ASK, "tools": [WEATHER], "tool_choice": "required", "max_tokens": 64}
    [call] = done(client, daemon, body)["tool_calls"]
    assert call["name"] == "get_weather" and isinstance(call["arguments"].get("city"), str)
    # tool_choice "none" offers none: the request runs as plain chat.
    body = {"prompt": ASK, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 4}
    assert "tool_calls" not in done(client, daemon, body)


def test_a_conversation_with_a_tool_result_runs_on_a_template_without_tools(
    client: Client, daemon: Daemon
):
    messages = [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather"}]},
        {"role": "tool", "content": '{"temperature": 18}', "tool_call_id": "c1"},
    ]
    assert done(client, daemon, {"messages": messages, "max_tokens": 8})["text"] is not None


def test_required_tool_choice_gives_a_call(client: Client, tool_daemon: Daemon):
    for temperature in (0, 0.9):
        body = {"prompt": ASK, "tools": [WEATHER], "tool_choice": "required"}
        reply = done(client, tool_daemon, {**body, "temperature": temperature, "max_tokens": 60})
        assert reply["finish_reason"] == "tool_calls", reply
        [call] = reply["tool_calls"]
        assert call["name"] == "get_weather" and isinstance(call["arguments"]["city"], str)
        assert call["id"].startswith("call_") and reply["text"] == ""


def test_the_tool_definitions_reach_the_model(client: Client, tool_daemon: Daemon):
    """The template renders them: the prompt is longer by about the definitions' tokens."""
    body = {"prompt": ASK, "tools": [WEATHER], "max_tokens": 1}
    offered = done(client, tool_daemon, body)["usage"]["prompt_tokens"]
    plain = done(client, tool_daemon, {**body, "tool_choice": "none"})["usage"]["prompt_tokens"]
    assert offered > plain + len(json.dumps(WEATHER)) // 8


def test_a_grammar_shaped_call_is_parsed_end_to_end(client: Client, tool_daemon: Daemon):
    """The model writes a Hermes <tool_call> block (the grammar sees to it) and the node finds
    the call in it: the same path a real Qwen2.5 reply takes."""
    grammar = (
        'root ::= "<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": '
        '{\\"city\\": \\"" [A-Za-z ]{1,20} "\\"}}\\n</tool_call>"'
    )
    body = {"prompt": ASK, "tools": [WEATHER], "grammar": grammar, "max_tokens": 60}
    reply = done(client, tool_daemon, body)
    assert reply["finish_reason"] == "tool_calls"
    assert reply["tool_calls"][0]["name"] == "get_weather"


def test_a_streamed_call_sends_no_markup(client: Client, tool_daemon: Daemon):
    body = {"prompt": ASK, "tools": [WEATHER], "tool_choice": "required", "stream": True}
    replies = ask(client, tool_daemon, {**body, "max_tokens": 60})
    assert replies[-1]["type"] == "done" and replies[-1]["tool_calls"]
    deltas = [r["text"] for r in replies if r["type"] == "delta"]
    assert "<tool_call>" not in "".join(deltas)
    assert replies[-1]["seq"] == len(deltas)


def test_a_conversation_with_calls_and_results(client: Client, tool_daemon: Daemon):
    call = {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
    messages = [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {
            "role": "tool",
            "content": '{"temperature": 18, "sky": "clear"}',
            "tool_call_id": "call_1",
        },
    ]
    body = {"messages": messages, "tools": [WEATHER], "max_tokens": 24}
    with_result = done(client, tool_daemon, body)
    without = done(client, tool_daemon, {**body, "messages": messages[:1]})
    assert with_result["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"] + 20


def test_a_session_keeps_the_call_and_its_result(client: Client, tool_daemon: Daemon):
    """A voice assistant's tool round trip in a session: the call is kept as the assistant's
    turn, so the result sent next (only the new turn) answers a call the prompt still shows."""
    sid = uuid.uuid4().hex[:8]
    body = {"prompt": ASK, "tools": [WEATHER], "tool_choice": "required", "max_tokens": 60}
    first = done(client, tool_daemon, {**body, "session": sid})
    [call] = first["tool_calls"]
    result = {"role": "tool", "content": '{"temperature": 18}', "tool_call_id": call["id"]}
    body = {"messages": [result], "tools": [WEATHER], "session": sid, "max_tokens": 24}
    second = done(client, tool_daemon, body)
    assert second["session"]["messages"] == 4  # the question, the call, the result, the answer
    # The call was rendered into the history: its arguments are in the prompt's tokens.
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"] + 10
