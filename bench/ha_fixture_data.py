"""The data behind bench/ha_fixture.py: Home Assistant 2026.11's texts and tool definitions,
the small home, and the recorded conversations (see ha_fixture.py's docstring for the sources).

Every string that HA itself writes is copied from its source, with the file named beside it;
the home, the spoken turns, the recorded model replies and tool-call ids are made up.
"""

from __future__ import annotations

from typing import Any

# -- texts (helpers/llm.py, homeassistant/llm.py, intent/llm.py) ---------------------------------

# helpers/llm.py DEFAULT_INSTRUCTIONS_PROMPT (the ollama and llama_cpp option forms suggest it,
# so a subentry made in the UI stores exactly this text as its prompt).
DEFAULT_INSTRUCTIONS_PROMPT = """You are a voice assistant for Home Assistant.
Answer questions about the world truthfully.
Respond simply and to the point in plain text.
"""

# components/homeassistant/llm.py DYNAMIC_CONTEXT_PROMPT
DYNAMIC_CONTEXT_PROMPT = (
    "You ARE equipped to answer questions about the"
    " current state of\n"
    "the home by retrieving live context."
    " This is a primary function."
    " Do not state you lack the\n"
    "functionality if the question requires live data.\n"
    "If the user asks about device existence/type"
    ' (e.g., "Do I have lights in the bedroom?"):'
    " Answer\n"
    "from the static context below.\n"
    "If the user asks about the CURRENT state, value,"
    ' or mode (e.g., "Is the lock locked?",\n'
    '"Is the fan on?",'
    ' "What mode is the thermostat in?",'
    ' "What is the temperature outside?"):\n'
    "    1.  Recognize this requires live data.\n"
    "    2.  You MUST use the provided tool to retrieve live context."
    " This tool will provide the needed real-time"
    " information (like temperature from the local"
    " weather, lock status, etc.).\n"
    "    3.  Use the tool's response to answer the"
    " user accurately, stating the actual value or"
    " state it returned.\n"
    "For general knowledge questions not about the"
    " home: Answer truthfully from internal"
    " knowledge.\n"
)
STATIC_CONTEXT_HEADER = (
    "Static Context: An overview of the areas and the devices in this smart home:"
)
LIVE_CONTEXT_HEADER = "Live Context: An overview of the areas and the devices in this smart home:"

# components/intent/llm.py DEVICE_CONTROL_TOOL_USAGE_PROMPT and the area prompt (an area, no floor)
DEVICE_CONTROL_TOOL_USAGE_PROMPT = (
    "When controlling Home Assistant always call the intent tools. "
    "Use intent__HassTurnOn to lock and intent__HassTurnOff to unlock a lock. "
    "When controlling a device, prefer passing just name and domain. "
    "When controlling an area, prefer passing just area name and domain."
)
AREA_PROMPT = (
    "You are in area {area} and all generic commands like"
    " 'turn on the lights' should target this area."
)

# -- the home --------------------------------------------------------------------------------------

SATELLITE_AREA = "Living Room"  # where the voice satellite (timers supported) stands

# (entity_id, name, area or None, state, attributes). Lights, switches, covers, climate, fan,
# media players, temperature/humidity/CO2 sensors and door/window/motion binary sensors are exposed
# by default (homeassistant/exposed_entities.py); the lock and the weather entity were exposed by
# hand. States matter only where a recorded GetLiveContext result shows them.
ENTITIES: list[tuple[str, str, str | None, str, dict[str, Any]]] = [
    ("light.kitchen_light", "Kitchen Light", "Kitchen", "off", {}),
    ("switch.coffee_maker", "Coffee Maker", "Kitchen", "off", {}),
    ("sensor.kitchen_temperature", "Kitchen Temperature", "Kitchen", "22.1", {}),
    ("binary_sensor.kitchen_motion", "Kitchen Motion", "Kitchen", "on", {}),
    ("light.living_room_ceiling", "Living Room Ceiling Light", "Living Room", "on", {}),
    ("light.floor_lamp", "Floor Lamp", "Living Room", "off", {}),
    ("media_player.living_room_tv", "Living Room TV", "Living Room", "off", {}),
    ("cover.living_room_blinds", "Living Room Blinds", "Living Room", "open", {}),
    ("climate.thermostat", "Thermostat", "Living Room", "heat", {}),
    (
        "sensor.living_room_temperature",
        "Living Room Temperature",
        "Living Room",
        "21.5",
        {"state_class": "measurement", "unit_of_measurement": "°C", "device_class": "temperature"},
    ),
    (
        "sensor.living_room_humidity",
        "Living Room Humidity",
        "Living Room",
        "46",
        {"state_class": "measurement", "unit_of_measurement": "%", "device_class": "humidity"},
    ),
    (
        "media_player.home_assistant_voice_0a1b2c_media_player",
        "Home Assistant Voice 0a1b2c Media Player",
        "Living Room",
        "idle",
        {},
    ),
    ("light.bedroom_light", "Bedroom Light", "Bedroom", "off", {}),
    ("light.bedside_lamp", "Bedside Lamp", "Bedroom", "off", {}),
    ("fan.bedroom_fan", "Bedroom Fan", "Bedroom", "off", {}),
    ("cover.bedroom_curtains", "Bedroom Curtains", "Bedroom", "closed", {}),
    ("sensor.bedroom_temperature", "Bedroom Temperature", "Bedroom", "19.8", {}),
    ("binary_sensor.bedroom_window", "Bedroom Window", "Bedroom", "off", {}),
    ("light.desk_lamp", "Desk Lamp", "Office", "on", {}),
    ("switch.office_heater", "Office Heater", "Office", "off", {}),
    ("sensor.office_co2", "Office CO2", "Office", "640", {}),
    ("media_player.office_speaker", "Office Speaker", "Office", "paused", {}),
    ("light.garden_lights", "Garden Lights", "Garden", "off", {}),
    ("switch.sprinkler", "Sprinkler", "Garden", "off", {}),
    ("sensor.outdoor_temperature", "Outdoor Temperature", "Garden", "14.2", {}),
    ("lock.front_door", "Front Door", None, "locked", {}),
    ("weather.forecast_home", "Forecast Home", None, "partlycloudy", {}),
]

# -- conversations ---------------------------------------------------------------------------------

# Each turn: (what the user said, the recorded tool call or None, the recorded final reply).
# A tool call: (tool name, arguments, the tool result's data, the llama_cpp tool_call id).
# Intent results are IntentResponse.as_dict() less "language" and "card" (helpers/llm.py
# IntentResponseDict); the GetLiveContext result is built from ENTITIES by ha_fixture.


def _done(*targets: tuple[str, str]) -> dict[str, Any]:
    """An intent's action_done response for entity targets (name, entity_id)."""
    success = [{"name": name, "type": "entity", "id": eid} for name, eid in targets]
    return {
        "speech": {},
        "response_type": "action_done",
        "data": {"success": success, "failed": []},
    }


LIVE_CONTEXT = "live_context:Living Room:sensor"  # placeholder ha_fixture fills in

CONVERSATIONS: list[dict[str, Any]] = [
    {
        "id": "01K9ZB4Q6T1XG7R2M8N3P5V0CW",
        "turns": [
            (
                "Turn on the kitchen light.",
                (
                    "intent__HassTurnOn",
                    {"name": "Kitchen Light"},
                    _done(("Kitchen Light", "light.kitchen_light")),
                    "kXq3LrV9mA2tP7wZ4cN8bY1dF6gH0jS5",
                ),
                "The kitchen light is now on.",
            ),
            (
                "What is the temperature in the living room?",
                (
                    "homeassistant__GetLiveContext",
                    {"area": "Living Room", "domain": "sensor"},
                    LIVE_CONTEXT,
                    "Rt5Wm2Qz8Xc1Vb4Nn7Lk3Jh6Gf9Dd0Ss",
                ),
                "It is 21.5 °C in the living room, at 46% humidity.",
            ),
            (
                "Set the bedroom light to 50 percent.",
                (
                    "light__HassLightSet",
                    {"name": "Bedroom Light", "brightness": 50},
                    _done(("Bedroom Light", "light.bedroom_light")),
                    "Pa8Sd3Fg6Hj1Kl4Zx7Cv0Bn2Mq5We9Rt",
                ),
                "The bedroom light is now at 50 percent.",
            ),
        ],
    },
    {
        "id": "01K9ZB7H2V5YJ3S9A6D1F4K8EQ",
        "turns": [
            (
                "How far away is the moon?",
                None,
                "The Moon is about 384,400 kilometres from Earth on average.",
            ),
            (
                "Close the living room blinds.",
                (
                    "intent__HassTurnOff",
                    {"name": "Living Room Blinds"},
                    _done(("Living Room Blinds", "cover.living_room_blinds")),
                    "Yu6Io9Pa2Sd5Fg8Hj1Kl4Zx7Cv0Bn3Mq",
                ),
                "Closing the living room blinds.",
            ),
        ],
    },
    {
        "id": "01K9ZBA0R8C2W6E4T9G5H1J7MX",
        "turns": [
            (
                "Set a timer for ten minutes.",
                (
                    "intent__HassStartTimer",
                    {"minutes": 10},
                    _done(),
                    "Lk2Jh5Gf8Dd1Ss4Aa7Qw0Er3Ty6Ui9Op",
                ),
                "Your ten minute timer has started.",
            ),
            (
                "Lock the front door.",
                (
                    "intent__HassTurnOn",
                    {"name": "Front Door", "domain": ["lock"]},
                    _done(("Front Door", "lock.front_door")),
                    "Zx9Cv2Bn5Mq8We1Rt4Yu7Io0Pa3Sd6Fg",
                ),
                "The front door is locked.",
            ),
            ("Thanks, that's all.", None, "You're welcome!"),
        ],
    },
]
