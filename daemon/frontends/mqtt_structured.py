"""The MQTT request's structured-output and tool fields: an assistant message's calls, and the
checks across json_schema, grammar, tools and tool_choice (docs/PROTOCOL.md, Tools)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from daemon.engine import tools


class ToolCallIn(BaseModel):
    """A call in an assistant message: the shape of done's tool_calls, so a client copies it."""

    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field("", max_length=128)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    arguments: dict[str, Any] = Field(default_factory=dict)


def check_structured(body: Any) -> str | None:
    """What is wrong with a request body's (mqtt_messages._Body) json_schema, grammar, tools and
    tool messages: at most one way to constrain the reply, tools well-formed, tool calls only in
    assistant turns and tool_call_id only in tool turns."""
    if body.json_schema is not None and body.grammar is not None:
        return "send at most one of 'json_schema' and 'grammar'"
    if body.tools:
        try:
            tools.check_tools(body.tools)
        except tools.ToolError as err:
            return str(err)
    if body.tool_choice == "required":
        if not body.tools:
            return "tool_choice: 'required' needs tools"
        if body.json_schema is not None or body.grammar is not None:
            return "tool_choice: 'required' constrains the reply itself; drop json_schema/grammar"
    for i, m in enumerate(body.messages or ()):
        if m.tool_calls and m.role != "assistant":
            return f"messages[{i}].tool_calls: only an assistant message makes tool calls"
        if m.tool_call_id is not None and m.role != "tool":
            return f"messages[{i}].tool_call_id: only a tool message answers a call"
    return None
