"""The ready-made examples in docs/examples/ ask what the daemon accepts and listen where it
answers (the Python example runs for real in tests/test_http_api.py)."""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt

from daemon.config import LimitsConfig
from daemon.frontends.mqtt_messages import Incoming, parse_request
from daemon.frontends.topics import Topics
from daemon.requests import Request
from daemon.safeguards.policy import reply_topic_allowed

EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"


def test_the_node_red_flow_asks_a_valid_request_and_hears_its_reply():
    nodes = {n["id"]: n for n in json.loads((EXAMPLES / "node-red-flow.json").read_text())}
    topics = Topics("edgellm", "kitchen")
    out, listen = nodes["edgellm-request"], nodes["edgellm-replies"]
    client = topics.client_of(out["topic"])
    assert client == "nodered"
    payload = nodes["edgellm-ask"]["payload"].encode()
    req = parse_request(Incoming(payload, client=client), topics, LimitsConfig())
    assert isinstance(req, Request), req
    # The daemon will publish there, and the flow's mqtt-in node hears it.
    assert reply_topic_allowed([topics.replies], req.reply.topic)
    assert mqtt.topic_matches_sub(listen["topic"], req.reply.topic)
    assert listen["broker"] == out["broker"] == nodes["edgellm-broker"]["id"]
    # Every wire leads to a node of the flow.
    for node in nodes.values():
        for outputs in node.get("wires", []):
            assert all(target in nodes for target in outputs)
