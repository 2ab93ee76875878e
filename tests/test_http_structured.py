"""Structured output and tools over HTTP with the unmodified ollama and openai clients: JSON
replies parse and match their schema (never exact words: the tiny model's text varies by CPU),
tools reach a template that renders them and come back in each API's shape."""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest

from daemon.frontends.http_ollama import OllamaWire
from daemon.frontends.http_openai import OpenAIWire
from daemon.requests import Done, Timings, Usage
from tests.helpers import LOOPBACK, Daemon
from tests.shapes import SCHEMA, WEATHER, matches

MODEL = "smollm2-135m"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
LIGHT = [{"role": "user", "content": "Turn on the kitchen light."}]


def base(d: Daemon) -> str:
    return f"http://{LOOPBACK}:{d.http_port}"


# -- the wires, against the clients' own response models (no model needed) ----------------------

CALLED = Done(
    "",
    "tool_calls",
    Usage(40, 20),
    Timings(1.0, 10.0, 50.0, 100.0),
    {"tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]},
)


def test_ollama_wire_carries_tool_calls_the_client_reads():
    wire = OllamaWire(f"{MODEL}:latest", chat=True)
    for line in (wire.body(CALLED), json.loads(wire.final(CALLED))):
        reply = ollama.ChatResponse.model_validate(line)
        [call] = reply.message.tool_calls or []
        assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
        assert reply.done_reason == "stop"  # as ollama says it


def test_openai_wire_carries_tool_calls_the_client_reads():
    body = OpenAIWire(MODEL, "r1", usage=False).body(CALLED)
    choice = openai.types.chat.ChatCompletion.model_validate(body).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.id == "call_1" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    events = OpenAIWire(MODEL, "r1", usage=False).final(CALLED).split(b"\n\n")
    chunks = [json.loads(e[6:]) for e in events if e.startswith(b"data: {")]
    parsed = [openai.types.chat.ChatCompletionChunk.model_validate(c) for c in chunks]
    [delta_call] = parsed[0].choices[0].delta.tool_calls or []
    assert delta_call.index == 0 and delta_call.function and delta_call.function.name
    assert parsed[-1].choices[0].finish_reason == "tool_calls"


# -- the default model: JSON output ---------------------------------------------------------------


@pytest.mark.model
def test_ollama_format_json_and_schema(daemon: Daemon):
    c = ollama.Client(host=base(daemon))
    # Room enough that a wandering string still closes (64 cut one short once), and a seed.
    opts = {"num_predict": 256, "temperature": 0.2, "seed": 7}
    anything = c.chat(model=MODEL, messages=LIGHT, format="json", options=opts, stream=False)
    assert isinstance(json.loads(anything.message.content or ""), dict)
    shaped = c.chat(model=MODEL, messages=LIGHT, format=SCHEMA, options=opts, stream=False)
    assert matches(json.loads(shaped.message.content or ""))
    parts = list(c.chat(model=MODEL, messages=LIGHT, format=SCHEMA, options=opts, stream=True))
    assert matches(json.loads("".join(p.message.content or "" for p in parts)))
    generated = c.generate(model=MODEL, prompt="Turn off the fan.", format=SCHEMA, options=opts)
    assert matches(json.loads(generated.response))


@pytest.mark.model
def test_openai_response_format_json_object_and_schema(daemon: Daemon):
    c = openai.OpenAI(base_url=f"{base(daemon)}/v1", api_key="unused", max_retries=0)
    kw = {"model": MODEL, "messages": LIGHT, "max_tokens": 256, "temperature": 0.2, "seed": 7}
    anything = c.chat.completions.create(**kw, response_format={"type": "json_object"})
    assert isinstance(json.loads(anything.choices[0].message.content or ""), dict)
    fmt = {"type": "json_schema", "json_schema": {"name": "command", "schema": SCHEMA}}
    shaped = c.chat.completions.create(**kw, response_format=fmt)
    assert matches(json.loads(shaped.choices[0].message.content or ""))
    chunks = list(c.chat.completions.create(**kw, response_format=fmt, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert matches(json.loads(text))


@pytest.mark.model
@pytest.mark.parametrize(
    ("path", "extra", "fragment"),
    [
        ("/api/chat", {"format": 5}, "format"),
        ("/api/chat", {"format": "yaml"}, "format"),
        ("/api/chat", {"format": {"type": 5}}, "json_schema"),
        ("/api/chat", {"tools": {"x": 1}}, "tools"),
        ("/api/chat", {"tools": [{"type": "function", "function": {}}]}, "tools[0]"),
        ("/v1/chat/completions", {"response_format": {"type": "xml"}}, "response_format"),
        ("/v1/chat/completions", {"response_format": {"type": "json_schema"}}, "json_schema"),
        ("/v1/chat/completions", {"tools": [WEATHER], "tool_choice": "often"}, "tool_choice"),
        ("/v1/chat/completions", {"tool_choice": "required"}, "needs tools"),
        (
            "/v1/chat/completions",
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "not in tools",
        ),
    ],
)
def test_bad_structured_requests_are_400s(daemon: Daemon, path, extra, fragment):
    body = {"model": MODEL, "messages": ASK, "stream": False, **extra}
    r = httpx.post(base(daemon) + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert fragment in (error if isinstance(error, str) else error["message"])


# -- a template that renders tools: calls in each API's shape -------------------------------------


@pytest.mark.model
def test_openai_required_tool_choice_gives_a_call(tool_daemon: Daemon):
    c = openai.OpenAI(base_url=f"{base(tool_daemon)}/v1", api_key="unused", max_retries=0)
    reply = c.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=60
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


@pytest.mark.model
def test_openai_streams_a_named_function_call(tool_daemon: Daemon):
    c = openai.OpenAI(base_url=f"{base(tool_daemon)}/v1", api_key="unused", max_retries=0)
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
            stream=True,
        )
    )
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    calls = [tc for d in deltas for tc in d.tool_calls or ()]
    assert [tc.function.name for tc in calls if tc.function] == ["get_weather"]
    assert "<tool_call>" not in "".join(d.content or "" for d in deltas)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.model
def test_ollama_tools_reach_the_template_and_results_go_back(tool_daemon: Daemon):
    c = ollama.Client(host=base(tool_daemon))
    assert "tools" in (c.show(MODEL).capabilities or [])
    opts = {"num_predict": 24, "temperature": 0.2}
    offered = c.chat(model=MODEL, messages=ASK, tools=[WEATHER], options=opts, stream=False)
    plain = c.chat(model=MODEL, messages=ASK, options=opts, stream=False)
    assert (offered.prompt_eval_count or 0) > (plain.prompt_eval_count or 0) + 40
    assert offered.done and (offered.message.content or offered.message.tool_calls is not None)
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": '{"temperature": 18}', "tool_name": "get_weather"},
    ]
    answered = c.chat(model=MODEL, messages=history, tools=[WEATHER], options=opts, stream=False)
    assert answered.done and (answered.prompt_eval_count or 0) > (offered.prompt_eval_count or 0)


@pytest.mark.model
def test_openai_history_with_calls_and_results(tool_daemon: Daemon):
    c = openai.OpenAI(base_url=f"{base(tool_daemon)}/v1", api_key="unused", max_retries=0)
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    reply = c.chat.completions.create(
        model=MODEL,
        messages=[
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_9", "content": '{"temperature": 18}'},
        ],
        tools=[WEATHER],
        max_tokens=16,
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    r = httpx.post(
        base(tool_daemon) + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [
                *ASK,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {**call, "function": {"name": "get_weather", "arguments": "{x"}}
                    ],
                },
            ],
        },
        timeout=60,
    )
    assert r.status_code == 400 and "arguments" in r.json()["error"]["message"]
