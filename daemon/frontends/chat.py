"""`edgellm chat`: an interactive terminal chat with a node over MQTT, for a kiosk or a shell.

One MQTT connection, one session (the node keeps the history: docs/PROTOCOL.md, Sessions), the
reply streamed as it comes. Ctrl-C stops the generation, not the program; Ctrl-C at an empty
prompt, Ctrl-D or /quit ends it. The terminal side is the standard library's input() (with
readline's line editing where it exists): nothing more to install on a kiosk.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TextIO

from daemon.config import Config
from daemon.credentials import mqtt_password
from daemon.frontends.client import reply_properties, user_topic
from daemon.frontends.mqtt import make_client
from daemon.frontends.topics import Topics

try:
    import readline  # input() gains line editing and history
except ImportError:  # not on every Python build
    readline = None  # type: ignore[assignment]

HELP = """commands:
  /reset   forget this conversation and start a new one
  /help    this list
  /quit    leave (so do Ctrl-D, and Ctrl-C at an empty prompt)
Ctrl-C while the node answers stops the answer; on a half-typed line it clears the line."""


def command(line: str) -> str | None:
    """The chat command a line is ("reset", "help", "quit"), "unknown", or None for a prompt."""
    text = line.strip()
    if not text.startswith("/"):
        return None
    name = text[1:].split(maxsplit=1)[0].lower() if len(text) > 1 else ""
    return name if name in ("reset", "help", "quit", "exit") else "unknown"


class ChatClient:
    """Sends each line as a turn of one session and prints the streamed answer."""

    def __init__(
        self,
        cfg: Config,
        fields: dict[str, Any],
        *,
        v311: bool = False,
        timeout_s: float = 120.0,
        out: TextIO = sys.stdout,
    ):
        self._cfg = cfg
        self._fields = fields
        self._v311 = v311
        self._timeout_s = timeout_s
        self._out = out
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.node_id)
        self._user = cfg.mqtt.username or ""
        self.session = uuid.uuid4().hex[:16]
        self._replies = self.topics.response_for(cfg.mqtt.username, f"chat-{uuid.uuid4().hex[:8]}")
        self._rid: str | None = None  # the request whose replies are printed
        self._ended = threading.Event()
        self._subscribed = threading.Event()
        self._error: str | None = None
        self._client = make_client(
            cfg.mqtt, f"edgellm-chat-{uuid.uuid4().hex[:8]}", mqtt_password(cfg.mqtt), v5=not v311
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message

    # -- MQTT (paho's thread) ---------------------------------------------------------------------

    def _on_connect(self, c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._error = f"broker refused the connection: {rc}"
            self._subscribed.set()
            return
        c.subscribe(f"{self._replies}/#", qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(reply, dict) or reply.get("id") != self._rid:
            return  # a late reply to an answer already stopped
        kind = reply.get("type")
        if kind == "delta":
            self._print(str(reply.get("text", "")))
        elif kind == "done":
            self._print("\n")
            self._ended.set()
        elif kind == "error":
            if reply.get("code") != "cancelled":  # the user knows: they pressed Ctrl-C
                self._print(f"\nedgellm: {reply.get('code')}: {reply.get('message')}\n")
            self._ended.set()

    def _print(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    # -- the terminal (the main thread) -------------------------------------------------------

    def _publish(self, topic: str, body: dict[str, Any], reply_topic: str | None = None) -> None:
        props = None
        if reply_topic is not None and not self._v311:
            props = reply_properties(reply_topic)
        self._client.publish(topic, json.dumps(body), qos=1, properties=props)

    def _ask(self, text: str) -> None:
        """One turn: send it, print the answer as it streams, stop it on Ctrl-C."""
        rid = uuid.uuid4().hex[:12]
        reply_topic = f"{self._replies}/{rid}"
        body = {"id": rid, "prompt": text, "stream": True, "session": self.session}
        body.update(self._fields)
        if self._v311:
            body["reply_to"] = reply_topic
        self._ended.clear()
        self._rid = rid
        own = user_topic(self._user, self.topics.client_request(self._user), self.topics.request)
        self._publish(own, body, reply_topic)
        self._print(f"{self.topics.node_id}> ")
        deadline = time.monotonic() + self._timeout_s
        try:
            while not self._ended.wait(0.1):
                if time.monotonic() > deadline:
                    self._stop(rid, f"\n[no answer within {self._timeout_s:.0f} s: stopped]\n")
                    return
        except KeyboardInterrupt:
            self._stop(rid, "\n[stopped]\n")

    def _stop(self, rid: str, note: str) -> None:
        user = self._user
        self._publish(
            user_topic(user, self.topics.client_cancel(user), self.topics.cancel), {"id": rid}
        )
        self._rid = None  # what still arrives for it is not printed
        self._print(note)

    def _reset(self) -> None:
        self._publish(self.topics.session_reset(self.session, self._user), {})
        self.session = uuid.uuid4().hex[:16]  # a fresh one too, should the node miss the reset
        self._print(f"[a new conversation: session {self.session}]\n")

    def run(self, read: Callable[[str], str] = input) -> int:
        """Connect, then chat until the user leaves; the exit code."""
        mqtt_cfg = self._cfg.mqtt
        try:
            self._client.connect(mqtt_cfg.host, mqtt_cfg.port, keepalive=mqtt_cfg.keepalive_s)
        except OSError as err:
            where = f"{mqtt_cfg.host}:{mqtt_cfg.port}"
            print(f"edgellm: cannot reach the broker at {where}: {err}", file=sys.stderr)
            return 1
        self._client.loop_start()
        try:
            if not self._subscribed.wait(10) or self._error is not None:
                print(f"edgellm: {self._error or 'no answer from the broker'}", file=sys.stderr)
                return 1
            self._print(f"chatting with {self.topics.base}, session {self.session} (/help)\n")
            return self._loop(read)
        finally:
            self._client.disconnect()
            self._client.loop_stop()

    def _loop(self, read: Callable[[str], str]) -> int:
        while True:
            try:
                line = read("you> ")
            except EOFError:
                self._print("\n")
                return 0
            except KeyboardInterrupt:
                self._print("\n")
                if readline is not None and readline.get_line_buffer():
                    continue  # Ctrl-C on a half-typed line clears it, as in a shell
                return 0
            what = command(line)
            if what is None and line.strip():
                self._ask(line)
            elif what in ("quit", "exit"):
                return 0
            elif what == "reset":
                self._reset()
            elif what == "help":
                self._print(HELP + "\n")
            elif what == "unknown":
                self._print("unknown command; /help lists them\n")
