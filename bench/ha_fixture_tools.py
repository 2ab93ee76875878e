"""The Assist API's tools for bench/ha_fixture.py's home, as Home Assistant 2026.11 sends them.

Each platform's llm.py async_get_tools, in domain order; each intent tool's parameters as
probatio 0.13.0's to_openapi (codecs/openapi.py) renders the handler's slot_schema with
helpers/llm.py selector_serializer and openapi_version "3.1.0". ha_fixture.py's docstring says
more; descriptions are copied from the handlers named beside them.
"""

from __future__ import annotations

from typing import Any

# -- definitions (as probatio.to_openapi renders them, openapi_version "3.1.0") ---------------

STR: dict[str, Any] = {"type": "string"}
POSITIVE_INT: dict[str, Any] = {"type": "integer", "minimum": 0}  # cv.positive_int
# All(Coerce(int), Percentage()): the parts' "type" differ, so probatio falls back to allOf.
PERCENT_ALL_OF: dict[str, Any] = {
    "allOf": [{"type": "integer"}, {"type": "number", "minimum": 0, "maximum": 100}]
}
# intent/__init__.py ONOFF_DEVICE_CLASSES, flattened in the order of the enums' class names
# (helpers/intent.py DynamicServiceIntentHandler.slot_schema sorts them by __name__).
BUTTON_CLASSES = ["identify", "restart", "update"]
COVER_CLASSES = [
    "awning",
    "blind",
    "curtain",
    "damper",
    "door",
    "garage",
    "gate",
    "shade",
    "shutter",
    "window",
]
MEDIA_CLASSES = ["tv", "speaker", "receiver", "projector"]
SWITCH_CLASSES = ["outlet", "switch"]
VALVE_CLASSES = ["water", "gas"]
ONOFF_CLASSES = BUTTON_CLASSES + COVER_CLASSES + MEDIA_CLASSES + SWITCH_CLASSES + VALVE_CLASSES

TURN_ON = (
    "Turns on/opens/presses a device or entity."
    " For locks, this performs a 'lock' action."
    " Use for requests like 'turn on',"
    " 'activate', 'enable', or 'lock'."
)
TURN_OFF = (
    "Turns off/closes a device or entity."
    " For locks, this performs an 'unlock' action."
    " Use for requests like 'turn off',"
    " 'deactivate', 'disable', or 'unlock'."
)
GET_LIVE_CONTEXT = (
    "Provides real-time information about the"
    " CURRENT state, value, or mode of devices,"
    " sensors, entities, or areas. "
    "Use this tool for: "
    "1. Answering questions about current"
    " conditions (e.g., 'Is the light on?'). "
    "2. As the first step in conditional actions"
    " (e.g., 'If the weather is rainy, turn off"
    " sprinklers' requires checking the weather"
    " first). "
    "You may filter for devices by name, domain,"
    " and area, including combining those"
    " filters. "
    "Prefer filtering by domain when searching"
    " for multiple devices of the same type."
)
LIVE_CONTEXT_PROPERTIES: dict[str, Any] = {
    "name": {
        "type": "string",
        "description": "Filter entities by name or alias (case-insensitive).",
    },
    "domain": {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": "Filter entities by domain (e.g. 'light', 'sensor')."
        " Accepts a single domain or a list.",
    },
    "area": {
        "type": "string",
        "description": "Filter entities by area name or alias (case-insensitive).",
    },
}
TIMER_HMS = ["hours", "minutes", "seconds"]
TIMER_START_HMS = ["start_hours", "start_minutes", "start_seconds"]
# (description, timer slots: Any(...) keys as (names, required), then the optional string slots)
TIMER_TOOLS: list[tuple[str, str, list[tuple[list[str], bool]], list[str]]] = [
    ("HassStartTimer", "Starts a new timer", [(TIMER_HMS, True)], ["name", "conversation_command"]),
    ("HassCancelTimer", "Cancels a timer", [(TIMER_START_HMS, False)], ["name", "area"]),
    ("HassCancelAllTimers", "Cancels all timers", [], ["area"]),
    (
        "HassIncreaseTimer",
        "Adds more time to a timer",
        [(TIMER_HMS, False), (TIMER_START_HMS, False)],
        ["name", "area"],
    ),
    (
        "HassDecreaseTimer",
        "Removes time from a timer",
        [(TIMER_HMS, True), (TIMER_START_HMS, False)],
        ["name", "area"],
    ),
    ("HassPauseTimer", "Pauses a running timer", [(TIMER_START_HMS, False)], ["name", "area"]),
    ("HassUnpauseTimer", "Resumes a paused timer", [(TIMER_START_HMS, False)], ["name", "area"]),
    (
        "HassTimerStatus",
        "Reports the current status of timers",
        [(TIMER_START_HMS, False)],
        ["name", "area"],
    ),
]
# media_player/intent.py, in registration order: (intent, description, extra slot or None)
MEDIA_TOOLS: list[tuple[str, str, tuple[str, dict[str, Any], bool] | None]] = [
    ("HassMediaUnpause", "Resumes a media player", None),
    ("HassMediaPause", "Pauses a media player", None),
    ("HassMediaNext", "Skips a media player to the next item", None),
    ("HassMediaPrevious", "Replays the previous item for a media player", None),
    (
        "HassSetVolume",
        "Sets the volume percentage of a media player",
        (
            "volume_level",
            {
                "type": "integer",
                "minimum": 0,
                "maximum": 100,
                "description": "The volume percentage of the media player",
            },
            True,
        ),
    ),
    ("HassSetVolumeRelative", "Increases or decreases the volume of a media player", None),
    (
        "HassMediaPlayerMute",
        "Mutes a media player",
        # probatio.Boolean() is a wrapped function whose argument is typed Any: an open schema.
        (
            "is_volume_muted",
            {"description": "Whether the media player should be muted or unmuted"},
            False,
        ),
    ),
    (
        "HassMediaPlayerUnmute",
        "Unmutes a media player",
        (
            "is_volume_muted",
            {"description": "Whether the media player should be muted or unmuted"},
            False,
        ),
    ),
]
# Any("up", "down", All(...)): probatio merges the two string enums through a set, so their
# order follows the process's string hash seed; this is one of the two orders HA sends.
VOLUME_STEP: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "enum": ["up", "down"]},
        {"type": "integer", "minimum": -100, "maximum": 100},
    ]
}


# -- tools -----------------------------------------------------------------------------------------


def _object(
    properties: dict[str, Any], required: list[str] | None = None, any_of: list[str] | None = None
) -> dict[str, Any]:
    """probatio's _assemble_object for a closed mapping."""
    result: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        result["required"] = required
    result["additionalProperties"] = False
    if any_of:
        result["anyOf"] = [{"required": [name]} for name in any_of]
    return result


def _targets(domains: list[str] | None, classes: list[str] | None) -> dict[str, Any]:
    """DynamicServiceIntentHandler.slot_schema's name/area/floor, domain and device_class."""
    props: dict[str, Any] = {key: dict(STR) for key in ("name", "area", "floor")}
    item = {"type": "string", "enum": domains} if domains else dict(STR)
    props["domain"] = {"type": "array", "items": item}
    if classes:
        props["device_class"] = {"type": "array", "items": {"type": "string", "enum": classes}}
    return props


def _tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """_format_tool: name, parameters, then the description."""
    return {
        "type": "function",
        "function": {"name": name, "parameters": parameters, "description": description},
    }


def _timer_tools() -> list[dict[str, Any]]:
    """intent/timers.py's handlers, offered because the satellite supports timers."""
    out = []
    for intent, description, any_keys, strings in TIMER_TOOLS:
        props: dict[str, Any] = {}
        any_of: list[str] = []
        for names, required in any_keys:
            props.update({name: dict(POSITIVE_INT) for name in names})
            any_of += names if required else []
        props.update({name: dict(STR) for name in strings})
        out.append(_tool(f"intent__{intent}", description, _object(props, any_of=any_of)))
    return out


def _media_tools() -> list[dict[str, Any]]:
    """media_player/llm.py's intent tools (no search/play tools: no player can search)."""
    out = []
    for intent, description, extra in MEDIA_TOOLS:
        if intent == "HassSetVolumeRelative":
            props = {"volume_step": VOLUME_STEP}
            props.update({key: dict(STR) for key in ("name", "area", "floor")})
            params = _object(props, required=["volume_step"])
        else:
            props = _targets(["media_player"], MEDIA_CLASSES)
            required = []
            if extra is not None:
                props[extra[0]] = extra[1]
                required = [extra[0]] if extra[2] else []
            params = _object(props, required=required)
        out.append(_tool(f"media_player__{intent}", description, params))
    return out


def tools() -> list[dict[str, Any]]:
    """The Assist API's tools for this home, in HA's order."""
    cover_valve = COVER_CLASSES + VALVE_CLASSES
    climate = {"temperature": {"type": "number"}}
    climate.update({key: dict(STR) for key in ("area", "name", "floor")})
    fan = _targets(["fan"], None) | {
        "percentage": PERCENT_ALL_OF | {"description": "The speed percentage of the fan"}
    }
    light = _targets(["light"], None) | {"color": dict(STR), "temperature": POSITIVE_INT}
    light["brightness"] = {"type": "integer", "minimum": 0, "maximum": 100}
    light["brightness"]["description"] = (
        "The brightness percentage of the"
        " light between 0 and 100, where 0"
        " is off and 100 is fully lit"
    )
    return [
        _tool(
            "assist_satellite__HassBroadcast",
            "Broadcast a message through the home",
            _object({"message": dict(STR)}, required=["message"]),
        ),
        _tool(
            "climate__HassClimateSetTemperature",
            "Sets the target temperature of a climate device or entity",
            _object(climate, required=["temperature"]),
        ),
        _tool(
            "fan__HassFanSetSpeed", "Sets a fan's speed by percentage", _object(fan, ["percentage"])
        ),
        _tool(
            "homeassistant__GetLiveContext",
            GET_LIVE_CONTEXT,
            _object(LIVE_CONTEXT_PROPERTIES),
        ),
        _tool("intent__HassTurnOn", TURN_ON, _object(_targets(None, ONOFF_CLASSES))),
        _tool("intent__HassTurnOff", TURN_OFF, _object(_targets(None, ONOFF_CLASSES))),
        _tool(
            "intent__HassSetPosition",
            "Sets the position of a device or entity",
            _object(_targets(None, cover_valve) | {"position": PERCENT_ALL_OF}, ["position"]),
        ),
        _tool(
            "intent__HassStopMoving",
            "Stops a moving device or entity",
            _object(_targets(None, cover_valve)),
        ),
        *_timer_tools(),
        _tool(
            "light__HassLightSet",
            "Sets the brightness percentage or color of a light",
            _object(light),
        ),
        _tool("llm__GetDateTime", "Provides the current date and time.", _object({})),
        *_media_tools(),
    ]
