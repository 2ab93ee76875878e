"""Structured output and tools on the HTTP doors: ollama's `format` and `tools`, OpenAI's
`response_format`, `tools` and `tool_choice` into Request fields, and the calls a reply made in
each API's own shape (docs/HTTP.md)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from daemon.engine import tools
from daemon.frontends.http_common import HttpError
from daemon.requests import Done, Request

# ollama's format "json" and OpenAI's json_object: any JSON object.
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def ollama_format(fmt: Any) -> dict[str, Any] | None:
    """The JSON schema ollama's `format` asks for: "json" any object, an object that schema."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return ANY_OBJECT
    if isinstance(fmt, dict):
        return fmt
    raise HttpError(400, 'format: "json" or a JSON schema object is required')


def openai_format(fmt: Any) -> dict[str, Any] | None:
    """The JSON schema OpenAI's `response_format` asks for (type text: none)."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema", ANY_OBJECT) if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise HttpError(
                400, 'response_format.json_schema: {"name": ..., "schema": {...}} is required'
            )
        return schema
    raise HttpError(400, 'response_format.type: one of "text", "json_object", "json_schema"')


def tools_of(raw: Any) -> tuple[dict[str, Any], ...] | None:
    if raw is None or raw == []:
        return None
    try:
        return tools.check_tools(raw)
    except tools.ToolError as err:
        raise HttpError(400, str(err)) from None


def openai_choice(raw: Any, offered: tuple[dict[str, Any], ...] | None) -> tuple[Any, str]:
    """(the tools offered, the tool_choice): a named function is offered alone, and required."""
    if raw is None:
        return offered, "auto"
    if isinstance(raw, dict):
        fn = raw.get("function") if raw.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        chosen = tuple(t for t in offered or () if t["function"]["name"] == name)
        if not chosen:
            raise HttpError(400, "tool_choice: the function it names is not in tools")
        return chosen, "required"
    try:
        return offered, tools.check_choice(raw)
    except tools.ToolError as err:
        raise HttpError(400, str(err)) from None


def structured(
    req: Request,
    schema: dict[str, Any] | None,
    offered: tuple[dict[str, Any], ...] | None = None,
    choice: str = "auto",
) -> Request:
    """The request with its JSON schema and tools."""
    if choice == "required" and not offered:
        raise HttpError(400, "tool_choice: 'required' needs tools")
    if choice == "required" and schema is not None:
        raise HttpError(400, "tool_choice 'required' and a JSON format cannot both shape the reply")
    return replace(req, json_schema=schema, tools=offered, tool_choice=choice)


def calls_of(done: Done) -> list[dict[str, Any]]:
    """The calls the reply made, as done's notes carry them: {"id", "name", "arguments"}."""
    return list(done.notes.get("tool_calls") or ())


def ollama_calls(done: Done) -> list[dict[str, Any]]:
    return [{"function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls_of(done)]


def openai_calls(done: Done, index: bool = False) -> list[dict[str, Any]]:
    """OpenAI's tool_calls: the arguments as a JSON string; a stream's delta numbers them."""
    out = []
    for i, c in enumerate(calls_of(done)):
        function = {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}
        call = {"id": c["id"], "type": "function", "function": function}
        out.append({"index": i, **call} if index else call)
    return out
