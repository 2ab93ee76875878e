"""Tool calls: definitions checked, calls found in recorded replies of each format (and
malformed ones left as text), the stream held back while a reply may be a call."""

from __future__ import annotations

import json

import pytest

from daemon.engine import tools
from daemon.requests import ChatMessage, ToolCall

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
KNOWN = {"get_weather", "get_time"}
PARIS = {"city": "Paris"}

# Replies in the shapes the model cards and chat templates give (Qwen2.5 / Hermes, Llama 3.x,
# Mistral), written out by hand; what a real model says varies, the shapes do not.
CALLS = [
    (
        "qwen2.5",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "",
        [("get_weather", PARIS)],
    ),
    (
        "qwen2.5-two",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
        "",
        [("get_weather", PARIS), ("get_time", {})],
    ),
    (
        "hermes-after-text",
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>",
        "Let me look.",
        [("get_weather", PARIS)],
    ),
    (
        "hermes-unclosed-at-the-end",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
        "",
        [("get_weather", PARIS)],
    ),
    (
        "hermes-arguments-as-a-string",
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>',
        "",
        [("get_weather", PARIS)],
    ),
    (
        "llama3.2",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [("get_weather", PARIS)],
    ),
    (
        "llama3.1-python-tag",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [("get_weather", PARIS)],
    ),
    (
        "llama3-list",
        '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", '
        '"parameters": {}}]',
        "",
        [("get_weather", PARIS), ("get_time", {})],
    ),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}]',
        "",
        [("get_weather", PARIS)],
    ),
]


@pytest.mark.parametrize(
    ("text", "content", "expected"), [c[1:] for c in CALLS], ids=[c[0] for c in CALLS]
)
def test_calls_are_found_in_each_format(text, content, expected):
    found_content, calls = tools.find_calls(text, KNOWN)
    assert found_content == content
    assert [(c.name, c.arguments) for c in calls] == expected
    assert all(c.id for c in calls) and len({c.id for c in calls}) == len(calls)


def test_a_call_id_the_model_gave_is_kept():
    _, calls = tools.find_calls(CALLS[-1][1], KNOWN)
    assert calls[0].id == "a1b2c3d4e"


NOT_CALLS = [
    ("plain", "The weather in Paris is mild."),
    ("cut-json", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par\n</tool_call>'),
    ("unknown-tool", '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>'),
    (
        "one-of-two-bad",
        '<tool_call>{"name": "get_time"}</tool_call><tool_call>{"name": 5}</tool_call>',
    ),
    ("arguments-a-list", '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>'),
    ("arguments-bad-string", '<tool_call>{"name": "get_weather", "arguments": "{x"}</tool_call>'),
    ("mistral-cut", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": '),
    ("json-reply", '{"city": "Paris", "temperature": 18}'),
    ("json-name-not-a-tool", '{"name": "Paris", "parameters": {}}'),
    ("json-list-of-numbers", "[1, 2, 3]"),
    ("empty", ""),
]


@pytest.mark.parametrize("text", [t for _, t in NOT_CALLS], ids=[n for n, _ in NOT_CALLS])
def test_what_is_not_a_well_formed_call_stays_text(text):
    assert tools.find_calls(text, KNOWN) == (text, ())


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"type": "function"}, "a list"),
        ([{"type": "function"}], "tools[0]"),
        ([{"type": "retrieval", "function": {"name": "x"}}], "tools[0]"),
        ([{"type": "function", "function": {"name": "has space"}}], "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "x" * 65}}], "1 to 64"),
        ([TIME, TIME], "defined twice"),
        ([{"type": "function", "function": {"name": "x", "description": 5}}], "description"),
        ([{"type": "function", "function": {"name": "x", "parameters": "{}"}}], "parameters"),
        ([TIME] * (tools.MAX_TOOLS + 1), f"the limit is {tools.MAX_TOOLS}"),
    ],
)
def test_bad_tool_definitions_say_what_is_wrong(raw, fragment):
    with pytest.raises(tools.ToolError, match="tools") as err:
        tools.check_tools(raw)
    assert fragment in str(err.value)


def test_tool_definitions_are_reduced_to_what_templates_read():
    checked = tools.check_tools([WEATHER, {**TIME, "function": {**TIME["function"], "x": 1}}])
    assert checked[0] == WEATHER
    assert checked[1]["function"] == {
        "name": "get_time",
        "description": "",
        "parameters": {"type": "object", "properties": {}},
    }


def test_templates_that_take_tools_and_the_call_format_they_teach():
    assert not tools.template_takes_tools(None)
    assert not tools.template_takes_tools("{{ messages[0]['content'] }}")
    assert tools.template_takes_tools("{% if tools %}{{ tools | tojson }}{% endif %}")
    assert tools.call_format("{% if tools %}<tool_call>{% endif %}") == "hermes"
    assert tools.call_format("[TOOL_CALLS] {{ tools }}") == "mistral"
    assert tools.call_format("{{ tools }} parameters") == "json"


def test_messages_with_calls_and_results_for_a_template_with_and_without_tools():
    call = ToolCall("call_1", "get_weather", PARIS)
    asked = ChatMessage("assistant", "", (call,))
    answer = ChatMessage("tool", '{"temp": 18}', tool_call_id="call_1")
    assert tools.template_message(asked, True) == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": PARIS},
            }
        ],
    }
    assert tools.template_message(answer, True)["role"] == "tool"
    # Without tools: edgellm's own format, the call in its markup, the result a user turn.
    plain = tools.template_message(asked, False)
    assert plain["content"].startswith("<tool_call>") and plain["content"].endswith("</tool_call>")
    inner = plain["content"].removeprefix("<tool_call>").removesuffix("</tool_call>")
    assert json.loads(inner) == {"name": "get_weather", "arguments": PARIS}
    result = tools.template_message(answer, False)
    assert result == {"role": "user", "content": '<tool_response>\n{"temp": 18}\n</tool_response>'}


def test_the_stream_waits_while_the_reply_may_be_a_call():
    gate = tools.CallGate()
    assert [gate.feed(p) for p in ("\n", "<tool", "_call>", '{"name"')] == ["", "", "", ""]
    assert gate.flush(was_call=True) == ""
    gate = tools.CallGate()
    assert gate.feed("<to") == ""
    assert gate.feed("day") == "<today"  # not a marker after all: released at once
    assert gate.feed(" is") == " is"
    gate = tools.CallGate()
    assert gate.feed("{") == "" and gate.feed('"city": 1}') == ""
    assert gate.flush(was_call=False) == '{"city": 1}'


def test_a_call_schema_names_each_tool():
    schema = tools.call_schema(tools.check_tools([WEATHER, TIME]), "json")
    names = [alt["properties"]["name"]["const"] for alt in schema["anyOf"]]
    assert names == ["get_weather", "get_time"]
    assert schema["anyOf"][0]["required"] == ["name", "parameters"]
    assert (
        "arguments"
        in tools.call_schema(tools.check_tools([TIME]), "hermes")["anyOf"][0]["properties"]
    )
