"""edgellm's own tool-calling format, for a model whose chat template cannot render tools.

The tools are described in the system text and a call is written as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the Hermes shape many small models
saw in training); a grammar built from the offered tools (structured.py) lets the reply be either
plain text or such calls, each naming an offered tool with arguments that match its schema. A
call therefore always parses and never leaks as text.

Two ways to describe the tools, chosen by model.tool_prompt (docs/BENCHMARKS.md has the
figures): "compact", one line per tool and per argument, since the grammar already holds each
schema (Home Assistant's 25 tools: about a third of the tokens of the JSON); or "json", every
definition as JSON, as tool-trained templates render them. Pure: no llama.cpp, no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from daemon.requests import ChatMessage

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
_HOW = (
    "You can call tools. To call one, reply with only:\n"
    f'{CALL_OPEN}{{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}{CALL_CLOSE}\n'
    "Otherwise reply in plain text."
)
# Enumerations longer than this are cut in the compact form (the grammar holds them all).
_ENUM_SHOWN = 12


def section(offered: tuple[dict[str, Any], ...], style: str) -> str:
    """The system text that teaches the format and lists the tools."""
    if style == "json":
        listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in offered)
    else:
        listing = "\n".join(_compact(t["function"]) for t in offered)
    return f"{_HOW}\n\nTools:\n{listing}"


def _compact(fn: dict[str, Any]) -> str:
    line = f"- {fn['name']}"
    if fn.get("description"):
        line += f": {' '.join(fn['description'].split())}"
    params = fn.get("parameters") or {}
    props = params.get("properties") or {}
    required = set(params.get("required") or ())
    args = [_argument(name, spec, name in required) for name, spec in props.items()]
    if args:
        line += "\n  arguments: " + "; ".join(args)
    return line


def _argument(name: str, spec: Any, required: bool) -> str:
    spec = spec if isinstance(spec, dict) else {}
    text = f"{name} ({_type(spec)}{', required' if required else ''})"
    if spec.get("description"):
        text += f" {' '.join(str(spec['description']).split())}"
    return text


def _type(spec: dict[str, Any]) -> str:
    """A schema's type in a few words: 'string', 'integer 0-100', 'one of: a, b', 'list of ...'."""
    if "enum" in spec:
        values = [json.dumps(v, ensure_ascii=False) for v in spec["enum"]]
        more = len(values) - _ENUM_SHOWN
        shown = ", ".join(values[:_ENUM_SHOWN]) + (f", ... ({more} more)" if more > 0 else "")
        return f"one of: {shown}"
    for key in ("anyOf", "oneOf"):
        if isinstance(spec.get(key), list):
            return " or ".join(_type(s) for s in spec[key] if isinstance(s, dict))
    kind = spec.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(str(k) for k in kind)
    if kind == "array" and isinstance(spec.get("items"), dict):
        return f"list of {_type(spec['items'])}"
    low, high = spec.get("minimum"), spec.get("maximum")
    if low is not None or high is not None:
        kind += f" {'' if low is None else low}-{'' if high is None else high}"
    return str(kind)


def message(m: ChatMessage) -> dict[str, Any]:
    """A history message for a template without tools: calls as the format writes them, a tool
    result as a user turn that says it is one (templates know no `tool` role)."""
    if m.role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{m.content}\n</tool_response>"}
    if not m.tool_calls:
        return {"role": m.role, "content": m.content}
    calls = [
        CALL_OPEN + json.dumps({"name": c.name, "arguments": c.arguments}) + CALL_CLOSE
        for c in m.tool_calls
    ]
    return {"role": m.role, "content": "\n".join([m.content, *calls]).strip()}
