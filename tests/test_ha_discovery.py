"""Home Assistant MQTT discovery: the payload against HA's documented keys, its templates run on
real payloads, and the retained message, re-announce, button and removal with a real daemon.

Home Assistant's own schema is not used: its package needs Python 3.13 for device-based
discovery (2024.11+; pip offers 2024.3 on this Python 3.11), and pulls in a large tree. The
schema below is the documented keys of each platform (home-assistant.io, integrations
*.mqtt pages), so a typo or a missing required key fails here.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from daemon import config
from daemon.frontends import ha_discovery
from daemon.frontends.mqtt_messages import error_payload, status_payload
from daemon.frontends.topics import HA_USER, Topics, ha_status
from daemon.reload import plan_reload
from daemon.requests import ErrorCode
from tests.helpers import Broker, Client, Daemon, poll

TOPICS = Topics("edgellm", "kitchen")

# Documented keys shared by every MQTT entity (availability, device, naming, ids).
_COMMON = {
    "p", "name", "unique_id", "availability", "availability_mode", "icon", "entity_category",
    "enabled_by_default", "object_id", "default_entity_id", "qos", "encoding",
}  # fmt: skip
_SCHEMA: dict[str, tuple[set[str], set[str]]] = {
    # platform: (required keys, further documented keys)
    "sensor": (
        {"state_topic"},
        {"value_template", "device_class", "unit_of_measurement", "state_class",
         "suggested_display_precision", "suggested_unit_of_measurement", "expire_after",
         "force_update", "json_attributes_topic", "json_attributes_template"},
    ),
    "binary_sensor": (
        {"state_topic"},
        {"value_template", "device_class", "payload_on", "payload_off", "expire_after",
         "force_update", "off_delay"},
    ),
    "button": ({"command_topic"}, {"payload_press", "command_template", "retain", "device_class"}),
    "event": (
        {"state_topic", "event_types"},
        {"value_template", "device_class", "json_attributes_topic", "json_attributes_template"},
    ),
}  # fmt: skip
# Device classes and the units Home Assistant accepts with them (sensor and binary_sensor docs).
_UNITS = {"temperature": {"°C", "°F", "K"}, "data_size": {"B", "kB", "MB", "GB", "KiB", "MiB"}}
_BINARY_CLASSES = {"running", "problem", "connectivity", "power"}
_AVAILABILITY_KEYS = {"topic", "value_template", "payload_available", "payload_not_available"}
_DEVICE_KEYS = {"ids", "name", "mf", "mdl", "sw", "hw", "sn", "cu", "sa"}

# GOVERNOR.md's telemetry example (what the sensors read).
TELEMETRY = {
    "protocol": 1, "board": "raspberry-pi-5", "threads": 3, "n_ctx": 2048, "admit": True,
    "tokens_per_s": 11.8, "queue_depth": 0, "busy": False, "cpu_temp_c": 79.4,
    "mem_headroom": 6950000000,
}  # fmt: skip


def render(template: str, payload: bytes) -> str:
    """A value template rendered the way Home Assistant's MQTT integration does: `value` is the
    payload text and `value_json` its JSON (HA's environment is an immutable sandbox too)."""
    env = ImmutableSandboxedEnvironment()
    env.filters["to_json"] = lambda v: json.dumps(v)
    text = payload.decode()
    return env.from_string(template).render(value=text, value_json=json.loads(text))


def check_schema(body: dict[str, Any]) -> None:
    """The documented shape of a device discovery message, key by key."""
    assert set(body) == {"dev", "o", "cmps"}
    assert body["dev"]["ids"] and set(body["dev"]) <= _DEVICE_KEYS
    assert body["o"]["name"]
    ids = [c["unique_id"] for c in body["cmps"].values()]
    assert len(set(ids)) == len(ids)
    for key, comp in body["cmps"].items():
        required, optional = _SCHEMA[comp["p"]]
        assert required <= set(comp), f"{key}: missing {required - set(comp)}"
        assert set(comp) <= required | optional | _COMMON, f"{key}: undocumented keys"
        assert comp["unique_id"] and comp["name"]
        for avail in comp["availability"]:
            assert avail["topic"] and set(avail) <= _AVAILABILITY_KEYS
        if comp["p"] == "sensor" and "device_class" in comp:
            assert comp["unit_of_measurement"] in _UNITS[comp["device_class"]]
        if comp["p"] == "binary_sensor" and "device_class" in comp:
            assert comp["device_class"] in _BINARY_CLASSES
        assert comp.get("state_class", "measurement") == "measurement"
        assert comp.get("entity_category", "config") in {"config", "diagnostic"}


def test_the_payload_has_every_key_home_assistant_requires():
    body = ha_discovery.device_config(TOPICS, "smollm2-135m", "1.2.3")
    check_schema(body)
    cmps = body["cmps"]
    assert {c["p"] for c in cmps.values()} == {"sensor", "binary_sensor", "button", "event"}
    expected = {"temperature", "tokens_per_s", "threads", "context_length", "queue_depth"}
    assert expected | {"memory_headroom", "busy", "admitting"} <= set(cmps)
    assert cmps["measure_threads"]["command_topic"] == "edgellm/kitchen/command/thread_sweep"
    assert cmps["reply"]["state_topic"] == f"edgellm/kitchen/response/{HA_USER}/event"
    assert body["dev"] == {
        "ids": ["edgellm_kitchen"],
        "name": "edgellm kitchen",
        "mf": "edgellm",
        "sw": "1.2.3",
        "mdl": "smollm2-135m",
    }
    # The payload is what a retained message carries: JSON of the same dict.
    assert json.loads(ha_discovery.config_payload(TOPICS, "m", "1")) == (
        ha_discovery.device_config(TOPICS, "m", "1")
    )


def test_the_schema_check_catches_a_broken_payload():
    # The check itself must be able to fail: a missing required key and a typo.
    for broken in ({"state_topic": None}, {"unit_of_measurment": "°C"}):
        body = ha_discovery.device_config(TOPICS, None, "1")
        temp = body["cmps"]["temperature"]
        for k, v in broken.items():
            temp.pop(k) if v is None else temp.update({k: v})
        with pytest.raises(AssertionError):
            check_schema(body)


def test_the_templates_read_the_real_payloads():
    cmps = ha_discovery.device_config(TOPICS, None, "1")["cmps"]
    telemetry = json.dumps(TELEMETRY).encode()
    values = {
        k: render(cmps[k]["value_template"], telemetry)
        for k in ("temperature", "tokens_per_s", "threads", "context_length", "queue_depth")
    }
    assert values == {
        "temperature": "79.4",
        "tokens_per_s": "11.8",
        "threads": "3",
        "context_length": "2048",
        "queue_depth": "0",
    }
    # In MiB: HA 2026.11's MQTT sensor drops suggested_unit_of_measurement.
    assert cmps["memory_headroom"]["unit_of_measurement"] == "MiB"
    assert render(cmps["memory_headroom"]["value_template"], telemetry) == "6628.0"
    assert render(cmps["busy"]["value_template"], telemetry) == "OFF"
    assert render(cmps["admitting"]["value_template"], telemetry) == "ON"
    # No sensors (a node without the governor's readings): "None" is HA's unknown, not an error.
    assert render(cmps["temperature"]["value_template"], b'{"threads": 2}') == "None"
    assert render(cmps["memory_headroom"]["value_template"], b'{"mem_headroom": null}') == "None"
    avail = cmps["busy"]["availability"][0]
    for state in ("online", "offline"):
        assert render(avail["value_template"], status_payload(state, {"node_id": "k"})) == state
    event = json.loads(
        render(cmps["reply"]["value_template"], error_payload("q1", ErrorCode.BUSY, "full"))
    )
    assert event["event_type"] == "error" and event["id"] == "q1"


def test_the_model_and_its_benchmark_come_from_the_status_message():
    cmps = ha_discovery.device_config(TOPICS, None, "1")["cmps"]
    bench = {"prompt_tps": 269.8, "decode_tps": 159.8, "ttft_cold_s": 17.0, "ttft_warm_s": 0.6}
    status = status_payload("online", {"model": "smollm2-135m", "bench": bench})
    for key in ("model", "bench_decode", "bench_prompt"):
        assert cmps[key]["state_topic"] == TOPICS.status
    assert render(cmps["model"]["value_template"], status) == "smollm2-135m"
    assert render(cmps["bench_decode"]["value_template"], status) == "159.8"
    assert render(cmps["bench_prompt"]["value_template"], status) == "269.8"
    never_benched = status_payload("online", {"model": "gemma3-270m"})
    assert render(cmps["bench_decode"]["value_template"], never_benched) == "None"
    assert render(cmps["model"]["value_template"], status_payload("online", {})) == "None"


def test_topics_and_config():
    assert TOPICS.ha_config("homeassistant") == "homeassistant/device/edgellm_kitchen/config"
    assert Topics("home/llm", "pi").ha_config("ha") == "ha/device/home_llm_pi/config"
    assert ha_status("homeassistant") == "homeassistant/status"
    cfg = config.parse({})
    assert cfg.homeassistant.discovery is True
    assert cfg.homeassistant.prefix == "homeassistant"
    # A restart applies it (a live change would leave the old announcement behind).
    off = config.parse({"homeassistant": {"discovery": False}})
    assert plan_reload(cfg, off).needs_restart == ("homeassistant.discovery",)
    for bad in ({"prefix": "a/#"}, {"prefix": ""}, {"discover": True}):
        with pytest.raises(config.ConfigError, match="homeassistant"):
            config.parse({"homeassistant": bad})


# -- with a real broker and the real daemon ----------------------------------------------------


def _config_topic(daemon: Daemon) -> str:
    return Topics("edgellm", daemon.node_id).ha_config("homeassistant")


def _published(daemon: Daemon, event: str = "ha_discovery_published") -> list[dict]:
    return [e for e in daemon.log_events() if e.get("event") == event]


@pytest.mark.model
def test_the_retained_config_appears_and_comes_again_when_home_assistant_is_back(
    broker: Broker, daemon: Daemon
):
    before = len(poll(lambda: _published(daemon), 30, "the discovery message"))
    client = Client(broker)
    try:
        # Subscribed after it was published: it arrives only because it is retained.
        client.subscribe(_config_topic(daemon))
        body = client.next(_config_topic(daemon), 10).body
        check_schema(body)
        assert body["dev"]["ids"] == [f"edgellm_{daemon.node_id}"]
        assert body["cmps"]["threads"]["state_topic"] == f"{daemon.prefix}/telemetry"
        assert body["cmps"]["busy"]["availability"][0]["topic"] == f"{daemon.prefix}/status"
        assert client.quiet(_config_topic(daemon), 0.3) == []
        # Home Assistant's birth message after its restart: the node announces itself again.
        client.publish("homeassistant/status", "online")
        assert client.next(_config_topic(daemon), 10).body == body
        assert len(_published(daemon)) > before
    finally:
        client.close()


@pytest.mark.model
def test_the_button_measures_the_threads_again(broker: Broker, daemon: Daemon):
    def sweeps() -> list[dict]:
        return [e for e in daemon.log_events() if e.get("event") == "thread_sweep"]

    # Generous: a sweep runs only while the worker is idle, and the suite's other tests share
    # this daemon (it missed 34 s once on a loaded machine).
    budget = 180 + 10 * (os.cpu_count() or 1)
    start_up = len(poll(sweeps, budget, "the start-up sweep"))
    client = Client(broker)
    try:
        client.publish(f"{daemon.prefix}/command/thread_sweep", "PRESS")
    finally:
        client.close()
    pressed = poll(lambda: _published(daemon, "thread_sweep_requested"), 10, "the press")
    assert pressed[-1]["source"] == "home_assistant"
    poll(lambda: sweeps()[start_up:], budget, "a sweep after the button press")


@pytest.mark.model
def test_an_automation_asks_and_the_event_entity_gets_the_reply(broker: Broker, daemon: Daemon):
    topics = Topics("edgellm", daemon.node_id)
    client = Client(broker)
    try:
        client.subscribe(topics.ha_event)
        # What HA's mqtt.publish sends (no MQTT v5 properties: reply_to in the payload).
        request = {"id": "ha1", "prompt": "Hi", "max_tokens": 4, "reply_to": topics.ha_event}
        client.publish(topics.client_request(HA_USER), json.dumps(request))
        reply = client.next(topics.ha_event, 120)
    finally:
        client.close()
    template = ha_discovery.device_config(topics, None, "1")["cmps"]["reply"]["value_template"]
    event = json.loads(render(template, json.dumps(reply.body).encode()))
    assert event["event_type"] == "done" and event["id"] == "ha1" and event["text"] is not None


@pytest.mark.model
def test_discovery_off_removes_the_retained_config(broker: Broker, model_path: Path, tmp_path):
    node = f"t{uuid.uuid4().hex[:6]}"
    first = Daemon(broker, tmp_path, node_id=node).start()
    try:
        poll(lambda: _published(first), 30, "the discovery message")
    finally:
        first.stop()
    topic = _config_topic(first)
    client = Client(broker)
    try:
        client.subscribe(topic)
        assert client.next(topic, 10).body["dev"]["ids"] == [f"edgellm_{node}"]
    finally:
        client.close()
    second = Daemon(broker, tmp_path / "off", node_id=node)
    second.workdir.mkdir()
    second.settings = {"homeassistant": {"discovery": False}}
    second.start()
    try:
        poll(lambda: _published(second, "ha_discovery_removed"), 30, "the removal")
        client = Client(broker)
        try:
            client.subscribe(topic)
            # The retained message is gone: a new subscriber is sent nothing.
            assert client.quiet(topic, 0.5) == []
        finally:
            client.close()
        assert _published(second) == []
    finally:
        second.stop()
