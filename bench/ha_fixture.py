"""What Home Assistant 2026.11 sends a local LLM server for a small home, and how it reads the
replies, built without HA (bench/ha_assist.py replays it).

    python -m bench.ha_fixture     # sizes of the system prompt and the tools, for a check by hand

A voice satellite (one that supports timers) stands in the Living Room of a home of five areas
and 27 exposed entities (bench/ha_fixture_data.py). The Assist API ("Control Home Assistant") is
on, the prompt is the default one. Which HA code each part follows:

- System prompt: conversation/chat_log.py ChatLog.async_provide_llm_data: the instructions
  prompt (helpers/llm.py DEFAULT_INSTRUCTIONS_PROMPT, no template in it, so not re-rendered),
  "\\n", the API prompt. No date/time line: that is added only when no tool's name ends in
  GetDateTime, and llm/llm.py always offers llm__GetDateTime. No extra system prompt. The prompt
  stays the same for every turn of a conversation (its key is unchanged, so HA keeps it).
- API prompt: components/llm/__init__.py AssistAPI: the platforms' prompts joined by "\\n" in
  domain order: homeassistant/llm.py (DYNAMIC_CONTEXT_PROMPT, the static context header, the
  exposed entities as annotatedyaml's dump, names/domain/areas only, sorted by name), then
  intent/llm.py (DEVICE_CONTROL_TOOL_USAGE_PROMPT and the satellite's area; no "not able to
  start timers" line, since the satellite supports timers).
- Tools: each platform's async_get_tools in domain order (assist_satellite, climate, fan,
  homeassistant, intent, light, llm, media_player), the intent tools in registration order
  (intent/__init__.py, media_player/intent.py), parameters as probatio 0.13.0's to_openapi
  renders the intent's slot_schema with helpers/llm.py selector_serializer and openapi 3.1.0
  (read from probatio's codecs/openapi.py: closed objects get "additionalProperties": false,
  Any("name", "area", "floor") keys become three optional properties, a required Any(...) key
  an "anyOf" of "required" lists, All(Coerce(int), Percentage()) an "allOf"). The tool is
  {"type": "function", "function": {"name", "parameters", "description"}} (_format_tool in
  ollama/entity.py and llama_cpp/entity.py; the same for both).
- Messages: ollama/entity.py _convert_content (the assistant's tool call without an id, tool
  results as {"role": "tool", "content": json_dumps({"data", "error"})}); llama_cpp/entity.py
  _convert_content_to_chat_message for the history and, within a turn, for what a non-streamed
  reply added, _convert_content_to_param for what a streamed reply added. json_dumps is orjson:
  compact, non-ASCII kept.
- Request arguments: ollama/entity.py (num_ctx 8192.0: the option form's NumberSelector gives a
  float; keep_alive -1; think False; format None; the 20-round trim); llama_cpp/entity.py
  (max_tokens 3000, top_p 1.0, temperature 0.7, user = the conversation id; response_format and,
  when streaming, stream_options left out); llama_cpp/api.py for the config flow's calls.
- Readers (ha_read_*): ollama/entity.py _transform_stream + _parse_tool_args, llama_cpp/entity.py
  _transform_stream (streamed) and _transform_response (not streamed), ported line by line.

Approximated: the home, the words spoken, the entity names (HA computes them from the device and
entity names; here each entity has one name, no alias), the recorded model replies, tool
arguments and tool-call ids; the order of VOLUME_STEP's two-string enum (a set in probatio, so it
follows the hash seed of HA's process). The recorded tool results follow the shape of
helpers/intent.py IntentResponse.as_dict and homeassistant/llm.py GetLiveContextTool. A
to-do list (a default install's Shopping List) would add four tools; there is none here.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from bench import ha_fixture_data as data
from bench.ha_fixture_tools import tools

OLLAMA_OPTIONS = {"num_ctx": 8192.0}  # ollama/const.py DEFAULT_NUM_CTX through a NumberSelector
OLLAMA_MAX_HISTORY = 20  # ollama/const.py DEFAULT_MAX_HISTORY
LLAMA_CPP_OPTIONS = {"max_tokens": 3000, "top_p": 1.0, "temperature": 0.7}  # llama_cpp/const.py
RECOMMENDED_CHAT_MODELS = ["gpt-3.5-turbo", "gpt-4", "local-model"]  # llama_cpp/const.py
DEFAULT_API_KEY = "sk-0000000000000000000"  # llama_cpp/const.py, sent when none is configured
INTERESTING_ATTRIBUTES = {"temperature", "current_temperature", "temperature_unit", "brightness"}
INTERESTING_ATTRIBUTES |= {"humidity", "unit_of_measurement", "device_class", "current_position"}
INTERESTING_ATTRIBUTES |= {"percentage", "volume_level", "media_title", "media_artist"}
INTERESTING_ATTRIBUTES |= {"media_album_name"}


@dataclass(frozen=True)
class Call:
    """One request HA makes: where it falls in the conversation, its kwargs, the tool expected."""

    conversation: int
    turn: int
    n: int  # 1: the user's turn; 2: after the tool result
    kwargs: dict[str, Any]
    expected_tool: str | None


def json_dumps(value: Any) -> str:
    """helpers/json.py json_dumps: orjson, compact, UTF-8 kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def yaml_dump(value: Any) -> str:
    """annotatedyaml.dumper.dump, which HA's util/yaml dump is."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text = yaml.dump(
        value, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=dumper
    )
    return str(text).replace(": null\n", ":\n")


# -- system prompt ---------------------------------------------------------------------------------


def exposed_entities(
    include_state: bool, area: str | None = None, domain: str | None = None
) -> list[dict[str, Any]]:
    """homeassistant/llm.py async_get_exposed_entities (values), optionally filtered."""
    out = []
    for entity_id, name, area_name, state, attributes in sorted(data.ENTITIES, key=lambda e: e[1]):
        entity_domain = entity_id.split(".", 1)[0]
        if (area and area_name != area) or (domain and entity_domain != domain):
            continue
        info: dict[str, Any] = {"names": name, "domain": entity_domain}
        if include_state:
            info["state"] = state
        if area_name:
            info["areas"] = area_name
        picked = {k: v for k, v in attributes.items() if k in INTERESTING_ATTRIBUTES}
        if include_state and picked:
            info["attributes"] = picked
        out.append(info)
    return out


def api_prompt() -> str:
    """The Assist API's prompt: homeassistant/llm.py's, then intent/llm.py's."""
    static = "\n".join(
        [
            data.DYNAMIC_CONTEXT_PROMPT,
            data.STATIC_CONTEXT_HEADER,
            yaml_dump(exposed_entities(False)),
        ]
    )
    device = "\n".join(
        [data.DEVICE_CONTROL_TOOL_USAGE_PROMPT, data.AREA_PROMPT.format(area=data.SATELLITE_AREA)]
    )
    return "\n".join([static, device])


def system_prompt() -> str:
    """chat_log.py async_provide_llm_data: instructions, API prompt (no date: GetDateTime)."""
    return "\n".join([data.DEFAULT_INSTRUCTIONS_PROMPT, api_prompt()])


def live_context(area: str, domain: str) -> dict[str, Any]:
    """GetLiveContextTool's result data for an area and domain filter."""
    entities = exposed_entities(True, area, domain)
    return {"result": "\n".join([data.LIVE_CONTEXT_HEADER, yaml_dump(entities)])}


# -- conversations and calls -----------------------------------------------------------------------


def conversations() -> list[dict[str, Any]]:
    """The recorded conversations, GetLiveContext results filled in from the home."""
    out = []
    for conversation in data.CONVERSATIONS:
        turns = []
        for user, call, reply in conversation["turns"]:
            if call is not None and call[2] == data.LIVE_CONTEXT:
                call = (call[0], call[1], live_context(call[1]["area"], call[1]["domain"]), call[3])
            turns.append((user, call, reply))
        out.append({"id": conversation["id"], "turns": turns})
    return out


def _ollama_message(item: tuple[Any, ...]) -> dict[str, Any]:
    """ollama/entity.py _convert_content, as the fields of ollama.Message it sets."""
    role = item[0]
    if role == "tool":
        return {"role": "tool", "content": json_dumps({"data": item[2], "error": False})}
    if role == "assistant":
        calls = [{"function": {"name": c[0], "arguments": c[1]}} for c in item[2] or ()]
        # The ollama server streams content "" beside a tool call, so HA keeps "" there.
        content = item[1] if item[1] is not None else ""
        return {
            "role": "assistant",
            "content": content,
            "thinking": None,
            "tool_calls": calls or None,
        }
    if role == "user":
        return {"role": "user", "content": item[1], "images": None}
    return {"role": "system", "content": item[1]}


def _tool_call(call: tuple[Any, ...], streamed: bool) -> dict[str, Any]:
    """llama_cpp/entity.py's tool call param; the two converters order its keys differently."""
    function = {"arguments": json_dumps(call[1]), "name": call[0]}
    if streamed:
        return {"id": call[3], "function": function, "type": "function"}
    return {"type": "function", "id": call[3], "function": function}


def _openai_message(item: tuple[Any, ...], streamed: bool) -> dict[str, Any]:
    """_convert_content_to_param (streamed) or _convert_content_to_chat_message."""
    role = item[0]
    if role == "tool":
        content = json_dumps({"data": item[2], "error": False})
        return {"role": "tool", "tool_call_id": item[1], "content": content}
    if role == "assistant" and item[2]:
        calls = [_tool_call(c, streamed) for c in item[2]]
        return {"role": "assistant", "content": item[1], "tool_calls": calls}
    return {"role": role, "content": (item[1] or "") if streamed else item[1]}


def _trim(messages: list[dict[str, Any]], max_messages: int) -> list[dict[str, Any]]:
    """ollama/entity.py _trim_history: the system prompt and the last max_messages rounds."""
    rounds = sum(m["role"] == "user" for m in messages) - 1
    if max_messages < 1 or rounds < max_messages:
        return messages
    return [messages[0], *messages[len(messages) - (2 * max_messages + 1) :]]


def _walk(conversation: dict[str, Any], ollama: bool) -> list[tuple[int, int, list, list, Any]]:
    """Each request of a conversation: (turn, n, chat log before the turn's calls, content the
    calls added, expected tool). Chat log items: ("system"|"user", text), ("assistant", content,
    [tool call] or None), ("tool", call id, result data)."""
    log: list[tuple[Any, ...]] = [("system", system_prompt())]
    steps: list[tuple[int, int, list, list, Any]] = []
    for turn, (user, call, reply) in enumerate(conversation["turns"], 1):
        log.append(("user", user))
        steps.append((turn, 1, list(log), [], call[0] if call else None))
        added: list[tuple[Any, ...]] = []
        if call is not None:
            added = [("assistant", "" if ollama else None, [call]), ("tool", call[3], call[2])]
            steps.append((turn, 2, list(log), list(added), None))
        log += [*added, ("assistant", reply, None)]
    return steps


def ollama_calls(conversation: int, model: str = "smollm2-135m:latest") -> list[Call]:
    """client.chat(**kwargs) for each request of conversation (an index) by the ollama
    integration (ollama/entity.py _async_handle_chat_log)."""
    out = []
    for turn, n, log, added, expected in _walk(conversations()[conversation], ollama=True):
        messages = _trim([_ollama_message(item) for item in log], OLLAMA_MAX_HISTORY)
        messages += [_ollama_message(item) for item in added]
        kwargs = {"model": model, "messages": messages, "tools": tools(), "stream": True}
        kwargs |= {"keep_alive": -1, "options": dict(OLLAMA_OPTIONS), "think": False}
        out.append(Call(conversation, turn, n, kwargs | {"format": None}, expected))
    return out


def openai_calls(conversation: int, streaming: bool, model: str = "smollm2-135m") -> list[Call]:
    """client.chat.completions.create(**kwargs) for each request of conversation (an index) by
    the llama_cpp integration (llama_cpp/entity.py _async_handle_chat_log)."""
    conv = conversations()[conversation]
    out = []
    for turn, n, log, added, expected in _walk(conv, ollama=False):
        messages = [_openai_message(item, streamed=False) for item in log]
        messages += [_openai_message(item, streamed=streaming) for item in added]
        kwargs = {"messages": messages, "model": model, "tools": tools(), **LLAMA_CPP_OPTIONS}
        kwargs |= {"user": conv["id"], "stream": streaming}
        out.append(Call(conversation, turn, n, kwargs, expected))
    return out


TEST_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
TEST_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "test_function",
            "description": "Test function.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]


def llama_cpp_setup_calls(model: str) -> list[tuple[str, dict[str, Any]]]:
    """The llama_cpp config flow (api.py): models.list() (10 s timeout), then
    async_validate_completions not streamed and streamed (HA streams when the second passes)."""
    test = {"model": model, "messages": TEST_MESSAGES, "tools": TEST_TOOLS, "max_tokens": 3}
    return [
        ("models.list", {}),
        ("chat.completions.create", test | {"stream": False}),
        ("chat.completions.create", test | {"stream": True}),
    ]


# -- how HA reads the replies ------------------------------------------------------------------


@dataclass
class Reading:
    """What HA's stream reader made of a reply."""

    role: bool = False
    content: str | None = None
    tools: list[tuple[str, Any]] = field(default_factory=list)
    error: str | None = None


def _parse_tool_args(arguments: dict[str, Any]) -> dict[str, Any]:
    """ollama/entity.py _parse_tool_args with _fix_invalid_arguments."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value[:1] + value[-1:] in ("[]", "{}"):
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(value)
        return value

    return {k: fix(v) for k, v in arguments.items() if v is not None and v != ""}


def ha_read_ollama(chunks: list[Any]) -> Reading:
    """ollama/entity.py _transform_stream: role on the first chunk, tool calls as they come."""
    reading = Reading(role=bool(chunks))
    try:
        for response in chunks:
            message = response["message"]
            for call in message.get("tool_calls") or ():
                args = _parse_tool_args(call["function"]["arguments"])
                reading.tools.append((call["function"]["name"], args))
            if (content := message.get("content")) is not None:
                reading.content = (reading.content or "") + content
    except Exception as err:  # HA's turn would fail the same way
        reading.error = repr(err)
    return reading


def ha_read_openai_stream(chunks: list[Any]) -> Reading:
    """llama_cpp/entity.py _transform_stream, step for step."""
    reading = Reading()
    current: dict[str, Any] | None = None

    def finish(tool: dict[str, Any], allow_empty: bool) -> None:
        reading.tools.append((tool["name"], None))  # named even if its arguments do not parse
        args = tool["args"]
        reading.tools[-1] = (tool["name"], json.loads(args) if args or not allow_empty else {})

    try:
        for chunk in chunks:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            delta = choice.delta
            if current is None and not delta.tool_calls:
                reading.role = reading.role or delta.role == "assistant"
                if delta.content is not None:
                    reading.content = (reading.content or "") + delta.content
            elif delta.tool_calls and (tool := delta.tool_calls[0]) and tool.function:
                if current and tool.index == current["index"]:
                    current["args"] += tool.function.arguments or ""
                else:
                    if current:
                        finish(current, allow_empty=False)
                    current = {"index": tool.index, "name": tool.function.name}
                    current["args"] = tool.function.arguments or ""
            if choice.finish_reason:
                if current:
                    finish(current, allow_empty=True)
                break
    except Exception as err:
        reading.error = repr(err)
    return reading


def ha_read_openai_message(message: Any) -> Reading:
    """llama_cpp/entity.py _transform_response: function tool calls, arguments json.loads-ed."""
    reading = Reading(role=message.role == "assistant", content=message.content)
    try:
        for call in message.tool_calls or ():
            if getattr(call, "type", "function") == "function":
                reading.tools.append((call.function.name, None))
                reading.tools[-1] = (call.function.name, json.loads(call.function.arguments))
    except Exception as err:
        reading.error = repr(err)
    return reading


def main() -> None:
    """Print the sizes, without a tokenizer."""
    prompt, tool_list = system_prompt(), tools()
    print(f"system prompt: {len(prompt)} chars")
    print(f"tools: {len(tool_list)}, {len(json.dumps(tool_list))} chars as JSON")
    for i, conv in enumerate(conversations()):
        calls = ollama_calls(i)
        print(f"conversation {i}: {len(conv['turns'])} turns, {len(calls)} calls")


if __name__ == "__main__":
    main()
