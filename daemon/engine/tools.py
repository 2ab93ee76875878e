"""Tools: a request's function definitions checked, given to the chat template, and the calls
found again in the reply. Pure: no llama.cpp, no I/O.

Small tool-capable models write their calls in the shape their chat template teaches
(docs/MODELS.md):
- Hermes, Qwen2.5: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, a block per call;
- Llama 3.x: the whole reply is `{"name": ..., "parameters": {...}}` (or "arguments"), perhaps
  after `<|python_tag|>`, or a list of them;
- Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
A reply that looks like a call but does not parse, or names a tool not offered, stays text.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from daemon.engine import toolprompt
from daemon.requests import ChatMessage, Request, ToolCall

# Home Assistant offers an intent tool per exposed kind of device, one per exposed script, and
# its own (GetLiveContext, GetDateTime ...): about 25 for a small home, more with scripts.
MAX_TOOLS = 128
TOOL_CHOICES = ("auto", "none", "required")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# How a call starts in each shape: a streamed reply that starts so is held back (CallGate).
_CALL_STARTS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "{", "[")
_HERMES_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
_TOOLS_RE = re.compile(r"\btools\b")


class ToolError(ValueError):
    """The tool definitions cannot be used; the message says which and why."""


def check_tools(raw: Any) -> tuple[dict[str, Any], ...]:
    """OpenAI-style function definitions, checked and reduced to name, description, parameters."""
    if not isinstance(raw, list):
        raise ToolError('tools: a list of {"type": "function", "function": {...}} is required')
    if len(raw) > MAX_TOOLS:
        raise ToolError(f"tools: {len(raw)} given; the limit is {MAX_TOOLS}")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise ToolError(f'tools[{i}]: {{"type": "function", "function": {{...}}}} is required')
        name, description = fn.get("name"), fn.get("description", "")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ToolError(f"tools[{i}].function.name: 1 to 64 of A-Z a-z 0-9 _ . - is required")
        if any(t["function"]["name"] == name for t in out):
            raise ToolError(f"tools[{i}].function.name: '{name}' is defined twice")
        if not isinstance(description, str):
            raise ToolError(f"tools[{i}].function.description: a string is required")
        params = fn.get("parameters")
        params = {"type": "object", "properties": {}} if params is None else params
        if not isinstance(params, dict):
            raise ToolError(f"tools[{i}].function.parameters: a JSON schema object is required")
        entry = {"name": name, "description": description, "parameters": params}
        out.append({"type": "function", "function": entry})
    return tuple(out)


def check_choice(raw: Any) -> str:
    if raw not in TOOL_CHOICES:
        raise ToolError('tool_choice: one of "auto", "none", "required"')
    return str(raw)


def offered(req: Request) -> tuple[dict[str, Any], ...] | None:
    """The tools the chat template is given: none when the request has none or says "none"."""
    return req.tools if req.tools and req.tool_choice != "none" else None


def offered_names(req: Request) -> set[str]:
    return {t["function"]["name"] for t in offered(req) or ()}


def template_takes_tools(template: str | None) -> bool:
    """Whether a chat template renders tool definitions (it reads the `tools` variable)."""
    return template is not None and _TOOLS_RE.search(template) is not None


def call_format(template: str | None) -> str:
    """The shape the template teaches for calls: "hermes", "mistral", or "json" (Llama 3.x)."""
    template = template or ""
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    return "json"


def template_message(m: ChatMessage, takes_tools: bool) -> dict[str, Any]:
    """A message as chat templates read it. A template without tools gets calls and results
    in edgellm's own format (toolprompt.message), so the context is not lost."""
    if not takes_tools:
        return toolprompt.message(m)
    if m.role == "tool":
        return {"role": "tool", "content": m.content, "tool_call_id": m.tool_call_id or ""}
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    return out


# Keys that only constrain (no shape): a member of anyOf made of these alone says "one of these
# keys is required", which a grammar of the shape need not say (Home Assistant's timer tools
# send {"anyOf": [{"required": ["hours"]}, ...]}, which llama-cpp-python's converter refuses).
_CONSTRAINT_KEYS = {"required", "description", "title", "minProperties", "maxProperties"}
_SHAPE_KEYS = {"type", "properties", "enum", "const", "anyOf", "oneOf", "items", "$ref"}


def grammar_schema(schema: Any) -> Any:
    """A tool's parameter schema as the grammar converter takes it: constraint-only anyOf/oneOf
    dropped, allOf members merged (HA: a percentage is allOf[integer, 0-100])."""
    if isinstance(schema, list):
        return [grammar_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf", "allOf")}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: grammar_schema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = grammar_schema(out["items"])
    for key in ("anyOf", "oneOf"):
        members = schema.get(key)
        if isinstance(members, list) and not all(
            isinstance(m, dict) and set(m) <= _CONSTRAINT_KEYS for m in members
        ):
            out[key] = grammar_schema(members)
    for member in schema.get("allOf") or ():
        if isinstance(member, dict):
            out = {**grammar_schema(member), **out}
    if not set(out) & _SHAPE_KEYS:  # only a description (HA's mute flag): any JSON value
        out["type"] = ["string", "number", "boolean", "object", "array", "null"]
    return out


def call_schema(tools: tuple[dict[str, Any], ...], fmt: str) -> dict[str, Any]:
    """The JSON schema of one call to any of these tools, in the format's key names."""
    key = "parameters" if fmt == "json" else "arguments"  # hermes, mistral, edgellm
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t["function"]["name"]},
                    key: grammar_schema(t["function"]["parameters"]),
                },
                "required": ["name", key],
            }
            for t in tools
        ]
    }


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


def find_calls(text: str, known: set[str]) -> tuple[str, tuple[ToolCall, ...]]:
    """(the text outside the calls, the calls); (text, ()) when there are none, or when what
    looks like calls does not parse or names a tool that was not offered."""
    for shape in (_hermes, _mistral, _bare_json):
        found = shape(text)
        if found is None:
            continue
        content, raw = found
        calls = _calls(raw, known)
        return (content, calls) if calls else (text, ())
    return text, ()


def _hermes(text: str) -> tuple[str, list[Any]] | None:
    if "<tool_call>" not in text:
        return None
    raw = [_json(block) for block in _HERMES_RE.findall(text)]
    return _HERMES_RE.sub("", text).strip(), raw


def _mistral(text: str) -> tuple[str, list[Any]] | None:
    rest = text.lstrip()
    if not rest.startswith("[TOOL_CALLS]"):
        return None
    rest = rest.removeprefix("[TOOL_CALLS]").lstrip()
    try:
        value, end = json.JSONDecoder().raw_decode(rest)
    except ValueError:
        return "", [None]
    return rest[end:].strip(), value if isinstance(value, list) else [value]


def _bare_json(text: str) -> tuple[str, list[Any]] | None:
    """Only a reply that is wholly a call (or a list of calls) counts: JSON output that is not
    call-shaped is a JSON reply, not a malformed call."""
    value = _json(text.strip().removeprefix("<|python_tag|>"))
    items = value if isinstance(value, list) and value else [value]
    if all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in items):
        return "", items
    return None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _calls(raw: list[Any], known: set[str]) -> tuple[ToolCall, ...]:
    """The calls, or () when any one is not a well-formed call to a known tool."""
    calls = []
    for item in raw:
        if not isinstance(item, dict) or item.get("name") not in known:
            return ()
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as a JSON string
            args = _json(args)
        if not isinstance(args, dict):
            return ()
        cid = item.get("id")
        calls.append(
            ToolCall(cid if isinstance(cid, str) and cid else new_call_id(), item["name"], args)
        )
    return tuple(calls)


def call_dicts(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    """The calls as the done reply carries them."""
    return [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls]


class CallGate:
    """Holds back a streamed reply while its start may be a tool call, so a client does not see
    the call's markup as text; a reply that is plainly text from its start streams as usual."""

    def __init__(self) -> None:
        self._held = ""
        self._open = False

    def feed(self, text: str) -> str:
        """What may be streamed now."""
        if self._open:
            return text
        self._held += text
        start = self._held.lstrip()
        if not start or any(s.startswith(start) or start.startswith(s) for s in _CALL_STARTS):
            return ""
        self._open = True
        out, self._held = self._held, ""
        return out

    def flush(self, was_call: bool) -> str:
        """At the end: the held text, unless it was the calls."""
        out, self._held = ("" if was_call else self._held), ""
        return out
