"""What Home Assistant 2026.11's two LLM integrations really send (bench/ha_fixture.py: its
system prompt, 26 Assist tools, the tool-call and tool-result turns), replayed with the clients
HA pins, read back as HA's own stream readers read them. Never the model's exact words."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from bench import ha_fixture as ha
from tests.helpers import LOOPBACK, Broker, Daemon, free_port

pytestmark = pytest.mark.model
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def node(
    broker: Broker, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    settings = {"http": {"port": free_port()}, "governor": {"thread_sweep": False}}
    d = Daemon(broker, tmp_path_factory.mktemp("ha"), settings=settings)
    d.start()
    yield d
    d.stop()


def base(d: Daemon) -> str:
    return f"http://{LOOPBACK}:{d.settings['http']['port']}"


def oai(d: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=base(d) + "/v1", api_key=ha.DEFAULT_API_KEY, timeout=300)


def short(kwargs: dict) -> dict:
    """The call as HA makes it, with a short answer: the test is the shape, not the prose."""
    return kwargs | {"max_tokens": 24}


def test_llama_cpp_config_flow_sets_up(node: Daemon):
    client = oai(node)
    assert MODEL in [m.id for m in client.models.list()]
    for _name, kwargs in ha.llama_cpp_setup_calls(MODEL)[1:]:
        result = client.chat.completions.create(**kwargs)
        if kwargs["stream"]:
            reading = ha.ha_read_openai_stream(list(result))
        else:
            reading = ha.ha_read_openai_message(result.choices[0].message)
        assert reading.error is None and reading.role


@pytest.mark.parametrize("streaming", [False, True])
def test_llama_cpp_conversation_is_answered_and_read(node: Daemon, streaming: bool):
    client = oai(node)
    for call in ha.openai_calls(0, streaming, MODEL):
        result = client.chat.completions.create(**short(call.kwargs))
        if streaming:
            reading = ha.ha_read_openai_stream(list(result))
        else:
            reading = ha.ha_read_openai_message(result.choices[0].message)
        assert reading.error is None and reading.role, (call.turn, call.n, reading)
        names = {t["function"]["name"] for t in ha.tools()}
        assert all(name in names for name, _ in reading.tools)


def test_ollama_conversation_is_answered_and_read(node: Daemon):
    client = ollama.Client(host=base(node), timeout=300)
    for call in ha.ollama_calls(0, f"{MODEL}:latest"):
        kwargs = call.kwargs | {"options": call.kwargs["options"] | {"num_predict": 24}}
        reading = ha.ha_read_ollama(list(client.chat(**kwargs)))
        assert reading.error is None and reading.role, (call.turn, call.n, reading)


def test_a_required_call_parses_with_a_model_whose_template_takes_no_tools(node: Daemon):
    [first, *_] = ha.openai_calls(0, False, MODEL)
    kwargs = first.kwargs | {"tool_choice": "required", "max_tokens": 200, "temperature": 0}
    message = oai(node).chat.completions.create(**kwargs).choices[0].message
    [call] = message.tool_calls or []
    assert call.function.name in {t["function"]["name"] for t in ha.tools()}
    assert isinstance(json.loads(call.function.arguments), dict)
    reading = ha.ha_read_openai_message(message)
    assert reading.error is None and len(reading.tools) == 1


def test_ha_keyword_shapes_get_a_200(node: Daemon):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}],
        "options": {"num_ctx": 8192.0, "num_predict": 4.0},
        "keep_alive": "5m",
        "think": "low",
        "tools": [],
        "stream": False,
        "some_future_field": {"x": 1},
    }
    body["messages"].append({"role": "tool", "content": '{"data":{},"error":false}'})
    body["messages"].append({"role": "user", "content": "and?"})
    r = httpx.post(base(node) + "/api/chat", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["message"]["role"] == "assistant"
    r = httpx.post(base(node) + "/api/generate", json={"model": MODEL, "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    r = httpx.post(base(node) + "/api/chat", json=body | {"keep_alive": "soon"})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]


def test_a_follow_up_evaluates_only_its_new_tokens(node: Daemon):
    """The second call of a conversation, a new conversation, and a call after an unrelated
    request in between: each finds HA's system prompt and tools in the cache."""
    client = oai(node)
    calls = ha.openai_calls(0, False, MODEL)
    other = ha.openai_calls(1, False, MODEL)[0]
    plain = {"model": MODEL, "messages": [{"role": "user", "content": "Count to three."}]}
    cached = []
    for kwargs in (calls[0].kwargs, calls[1].kwargs, plain, other.kwargs):
        usage = client.chat.completions.create(**short(kwargs)).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        cached.append((usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0))
    (_, _), (total2, cached2), _, (total4, cached4) = cached
    assert total2 - cached2 < 400, cached  # the tool call and its result, not the 4.5k prefix
    assert total4 - cached4 < 400, cached  # restored after the unrelated request
