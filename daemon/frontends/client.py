"""The `edgellm ask` client: one request over MQTT, the replies printed as they arrive.

With frontends/mqtt.py, the only module importing paho; it shares that module's client set-up.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.config import Config
from daemon.credentials import mqtt_password
from daemon.frontends.mqtt import make_client
from daemon.frontends.topics import Topics
from daemon.requests import new_id


def user_topic(username: str | None, per_user: str, plain: str) -> str:
    """With a user name, the per-user topic: the LAN broker's ACL binds it to that user (its rate
    limit and allow-list entry); anonymous clients use the plain topic."""
    return per_user if username else plain


def reply_properties(reply_topic: str, correlation: bytes | None = None) -> Properties:
    """A request's MQTT v5 Response Topic (and Correlation Data): where the node answers."""
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


@dataclass(frozen=True)
class AskOptions:
    """How to ask and how to print: what `edgellm ask`'s flags say."""

    stream: bool | str  # False, True (tokens) or "sentences"
    sentences: bool  # one sentence per line
    json_out: bool
    v311: bool
    timeout_s: float


class AskClient:
    """Sends one request, prints deltas and the reply, and says how it ended (an exit code)."""

    def __init__(self, cfg: Config, prompt: str, fields: dict[str, Any], opts: AskOptions):
        self._cfg = cfg
        self._opts = opts
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.node_id)
        self.rid = new_id()
        self.reply_topic = self.topics.response_for(cfg.mqtt.username, self.rid)
        self.body: dict[str, Any] = {"id": self.rid, "prompt": prompt, "stream": opts.stream}
        self.body.update(fields)
        if opts.v311:
            self.body["reply_to"] = self.reply_topic
        self._correlation = uuid.uuid4().bytes
        self.finished = threading.Event()
        self.code = 1
        self._client = make_client(
            cfg.mqtt,
            f"edgellm-ask-{uuid.uuid4().hex[:8]}",
            mqtt_password(cfg.mqtt),
            v5=not opts.v311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(self, c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            print(f"edgellm: broker refused the connection: {rc}", file=sys.stderr)
            self.finished.set()
            return
        c.subscribe(self.reply_topic, qos=1)

    def _on_subscribe(self, c: Any, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        props = None
        if not self._opts.v311:
            props = reply_properties(self.reply_topic, self._correlation)
        user = self._cfg.mqtt.username or ""
        topic = user_topic(user, self.topics.client_request(user), self.topics.request)
        c.publish(topic, json.dumps(self.body), qos=1, properties=props)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            return
        sentences = self._opts.sentences
        if self._opts.json_out:
            print(json.dumps(reply, ensure_ascii=False), flush=True)
        kind = reply.get("type")
        if kind == "delta" and not self._opts.json_out:
            print(reply.get("text", ""), end="\n" if sentences else "", flush=True)
        elif kind == "done":
            if not self._opts.json_out:
                if self.body["stream"] is False:
                    print(reply.get("text", ""), end="")
                if not sentences:
                    print(flush=True)
            self.code = 0
            self.finished.set()
        elif kind == "error":
            print(f"edgellm: {reply.get('code')}: {reply.get('message')}", file=sys.stderr)
            self.finished.set()

    def run(self) -> int:
        """Connect, ask, wait for the terminal reply or the timeout (then cancel); the exit code."""
        mqtt_cfg = self._cfg.mqtt
        try:
            self._client.connect(mqtt_cfg.host, mqtt_cfg.port, keepalive=mqtt_cfg.keepalive_s)
        except OSError as err:
            print(
                f"edgellm: cannot reach the broker at {mqtt_cfg.host}:{mqtt_cfg.port}: {err}",
                file=sys.stderr,
            )
            return 1
        self._client.loop_start()
        if not self.finished.wait(self._opts.timeout_s):
            print(
                f"edgellm: no reply within {self._opts.timeout_s:.0f} s "
                f"(is a node serving {self.topics.request}?)",
                file=sys.stderr,
            )
            self.code = 1
            user = mqtt_cfg.username or ""
            cancel = user_topic(user, self.topics.client_cancel(user), self.topics.cancel)
            self._client.publish(cancel, json.dumps({"id": self.rid}), qos=1).wait_for_publish(2)
        self._client.disconnect()
        self._client.loop_stop()
        return self.code
