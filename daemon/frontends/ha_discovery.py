"""Home Assistant MQTT discovery: the one retained device message that makes a node a device
with sensors, binary sensors, a button and an event entity. Pure: builds payloads, no I/O.

The format is Home Assistant's device-based discovery (2024.11 and later): one message on
``<ha prefix>/device/<object id>/config`` with the device (``dev``), the origin (``o``) and a
map of components (``cmps``, each naming its platform in ``p``); an empty retained message on
the same topic removes the device and every entity of it. Abbreviated keys are the ones
Home Assistant's documentation uses; the rest are spelled out.
"""

from __future__ import annotations

import json
from typing import Any

from daemon.frontends.topics import Topics

# The event entity's event types: the reply types that end a request (docs/PROTOCOL.md).
EVENT_TYPES = ("done", "error")
# The button's payload (Home Assistant's default payload_press, said here so it is not implicit).
PRESS = "PRESS"
# Home Assistant's MQTT event wants a JSON object with an `event_type`; a reply names its type
# in `type`: the template copies it over, so the reply itself stays protocol version 1.
EVENT_TEMPLATE = "{{ dict(value_json, event_type=value_json.type) | to_json }}"
# The status payload is JSON ({"state": "online", ...}); availability compares its state.
AVAILABILITY_TEMPLATE = "{{ value_json.state }}"


def _telemetry(field: str) -> str:
    # .get: a field the node does not report (no sensor, no governor) renders "None", which an
    # MQTT sensor takes as "unknown" rather than logging a template error.
    return f"{{{{ value_json.get('{field}') }}}}"


def _mib(field: str) -> str:
    # Bytes as MiB: HA 2026.11's MQTT sensor drops suggested_unit_of_measurement, so a sensor in
    # bytes shows bytes. Not a number (no reading): "None", HA's unknown.
    value = f"value_json.get('{field}')"
    return f"{{{{ ({value} / 1048576) | round(1) if {value} is number else None }}}}"


def _flag(field: str) -> str:
    return f"{{{{ 'ON' if value_json.get('{field}') else 'OFF' }}}}"


# key -> (platform, name, telemetry field, extra keys). Sensors and binary sensors read telemetry.
_TELEMETRY_ENTITIES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "temperature": (
        "sensor",
        "SoC temperature",
        "cpu_temp_c",
        {"device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement"},
    ),
    "tokens_per_s": (
        "sensor",
        "Speed",
        "tokens_per_s",
        {
            "unit_of_measurement": "tokens/s",
            "state_class": "measurement",
            "icon": "mdi:speedometer",
        },
    ),
    "threads": (
        "sensor",
        "Threads",
        "threads",
        {"state_class": "measurement", "icon": "mdi:cpu-64-bit"},
    ),
    "context_length": (
        "sensor",
        "Context length",
        "n_ctx",
        {"unit_of_measurement": "tokens", "state_class": "measurement", "icon": "mdi:text-long"},
    ),
    "queue_depth": (
        "sensor",
        "Queue depth",
        "queue_depth",
        {"state_class": "measurement", "icon": "mdi:tray-full"},
    ),
    "memory_headroom": (
        "sensor",
        "Memory headroom",
        "mem_headroom",
        {"device_class": "data_size", "unit_of_measurement": "MiB", "state_class": "measurement"},
    ),
    "busy": ("binary_sensor", "Busy", "busy", {"device_class": "running"}),
    "admitting": ("binary_sensor", "Admitting requests", "admit", {"icon": "mdi:door-open"}),
}


# key -> (name, template over the status message, extra keys): what the node says of its model.
_STATUS_ENTITIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "model": ("Model", "{{ value_json.get('model') }}", {"icon": "mdi:brain"}),
    # Measured by `edgellm bench` on this device (docs/MODELS.md); unknown until it has run.
    "bench_decode": (
        "Benchmarked speed",
        "{{ value_json.get('bench', {}).get('decode_tps') }}",
        {"unit_of_measurement": "tokens/s", "icon": "mdi:speedometer-medium"},
    ),
    "bench_prompt": (
        "Benchmarked prompt speed",
        "{{ value_json.get('bench', {}).get('prompt_tps') }}",
        {"unit_of_measurement": "tokens/s", "icon": "mdi:speedometer-medium"},
    ),
}


def device_config(topics: Topics, model: str | None, version: str) -> dict[str, Any]:
    """The discovery payload of one node: its device, origin and components."""
    oid = topics.ha_object_id()
    availability = [
        {
            "topic": topics.status,
            "value_template": AVAILABILITY_TEMPLATE,
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]
    components = _components(topics)
    for key, component in components.items():
        # Every entity carries its own availability and a unique id (needed to edit it in HA).
        component["unique_id"] = f"{oid}_{key}"
        component["availability"] = availability
    device: dict[str, Any] = {
        "ids": [oid],
        "name": f"edgellm {topics.node_id}",
        "mf": "edgellm",
        "sw": version,
    }
    if model is not None:
        device["mdl"] = model
    return {
        "dev": device,
        "o": {"name": "edgellm", "sw": version},
        "cmps": components,
    }


def _components(topics: Topics) -> dict[str, dict[str, Any]]:
    """Each entity's own keys: telemetry and status sensors, the button, the reply event."""
    components: dict[str, dict[str, Any]] = {}
    for key, (platform, name, field, extra) in _TELEMETRY_ENTITIES.items():
        template = _flag(field) if platform == "binary_sensor" else _telemetry(field)
        template = _mib(field) if extra.get("unit_of_measurement") == "MiB" else template
        components[key] = {
            "p": platform,
            "name": name,
            "state_topic": topics.telemetry,
            "value_template": template,
            **extra,
        }
    for key, (name, template, extra) in _STATUS_ENTITIES.items():
        components[key] = {
            "p": "sensor",
            "name": name,
            "state_topic": topics.status,
            "value_template": template,
            "entity_category": "diagnostic",
            **extra,
        }
    components["measure_threads"] = {
        "p": "button",
        "name": "Measure threads again",
        "command_topic": topics.sweep_command,
        "payload_press": PRESS,
        "entity_category": "config",
        "icon": "mdi:timer-refresh",
    }
    components["reply"] = {
        "p": "event",
        "name": "Reply",
        "state_topic": topics.ha_event,
        "event_types": list(EVENT_TYPES),
        "value_template": EVENT_TEMPLATE,
        "icon": "mdi:message-reply-text",
    }
    return components


def config_payload(topics: Topics, model: str | None, version: str) -> bytes:
    """The discovery payload as the retained message carries it."""
    body = device_config(topics, model, version)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# An empty retained payload on the config topic removes the device and its entities.
REMOVE = b""
