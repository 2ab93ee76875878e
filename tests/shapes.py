"""What the structured-output tests and bench/structured.py ask with: the home-automation command
schema, the check that a reply matches it, and a tool definition."""

from __future__ import annotations

from typing import Any

SCHEMA = {
    "type": "object",
    "properties": {"action": {"enum": ["on", "off"]}, "device": {"type": "string"}},
    "required": ["action", "device"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def matches(obj: Any) -> bool:
    """Whether obj is a command as SCHEMA says."""
    return (
        isinstance(obj, dict)
        and set(obj) == {"action", "device"}
        and obj["action"] in ("on", "off")
        and isinstance(obj["device"], str)
    )
