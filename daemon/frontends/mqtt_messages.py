"""The MQTT JSON wire format: parsing and validating what arrives, encoding what leaves."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from daemon.config import LimitsConfig
from daemon.engine import gbnf, tools
from daemon.frontends.mqtt_structured import ToolCallIn, check_structured
from daemon.frontends.topics import Topics, is_publishable
from daemon.requests import (
    SESSION_PATTERN,
    ChatMessage,
    Done,
    ErrorCode,
    Priority,
    Rejection,
    ReplyAddress,
    Request,
    StreamMode,
    ToolCall,
    new_id,
)

PROTOCOL_VERSION = 1
_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
_ID_RE = re.compile(_ID_PATTERN)
# The longest client name (the topic level after .../request/) accepted.
MAX_CLIENT_CHARS = 128
# The MQTT v5 user property counting how often nodes handed a fleet request back to the group.
FLEET_HOPS = "edgellm-hops"
_FLEET_SESSION = (
    "session: a session lives on one node; send its turns to that node's own request topic "
    "(a fleet reply's `node` names it)"
)


@dataclass(frozen=True)
class Incoming:
    """An MQTT message as the transport hands it over."""

    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None
    received_at: float = 0.0
    # The MQTT v5 Message Expiry Interval left when the broker delivered it (seconds).
    expiry_s: int | None = None
    client: str = ""
    # A request to the fleet's shared topic: how often nodes have handed it back to the group
    # (docs/FLEET.md). None: a request to this node's own topic.
    fleet_hops: int | None = None

    def default_reply(self, topics: Topics, rid: str) -> str:
        """Where replies go when the request names no reply address: the node's reply tree, or
        for a fleet request the group's (its client cannot know which node will answer)."""
        if self.fleet_hops is not None:
            return topics.fleet_response_for(self.client, rid)
        return topics.response_for(self.client, rid)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=tools.MAX_TOOLS)
    tool_call_id: str | None = Field(None, max_length=128)

    def message(self) -> ChatMessage:
        calls = tuple(ToolCall(c.id, c.name, c.arguments) for c in self.tool_calls or ())
        return ChatMessage(self.role, self.content, calls, self.tool_call_id)


class _Body(BaseModel):
    """The JSON request body; unknown fields are errors so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = Field(None, pattern=_ID_PATTERN)
    messages: list[_Message] | None = Field(None, min_length=1)
    prompt: str | None = Field(None, min_length=1)
    system: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    stream: bool | Literal["tokens", "sentences"] = False
    reply_to: str | None = None
    priority: Literal["interactive", "background"] = "interactive"
    deadline_ms: int | None = Field(None, ge=1, le=86_400_000)
    stream_interval_ms: int | None = Field(None, ge=0, le=5000)
    delta_qos: Literal[0, 1, 2] | None = None
    json_schema: dict[str, Any] | None = None
    session: str | None = Field(None, pattern=SESSION_PATTERN)
    grammar: str | None = Field(None, min_length=1, max_length=gbnf.MAX_CHARS)
    tools: list[Any] | None = None
    tool_choice: Literal["auto", "none", "required"] = "auto"

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _int_is_float(cls, v: Any) -> Any:
        # strict mode refuses 1 for a float; JSON writers often drop the ".0".
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _error_text(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "request"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{key}: {msg}")
    return "; ".join(parts[:5])


def parse_request(msg: Incoming, topics: Topics, limits: LimitsConfig) -> Request | Rejection:
    """Turn an MQTT payload into a Request, or a Rejection saying clearly what is wrong."""
    v5_reply = None
    if msg.response_topic and is_publishable(msg.response_topic):
        v5_reply = ReplyAddress(msg.response_topic, msg.correlation)
    reject = _Rejector(msg, topics, v5_reply)
    text = _payload_text(msg, limits, reject)
    if isinstance(text, Rejection):
        return text
    body = _body(text, limits, reject)
    if isinstance(body, Rejection):
        return body
    if body.session is not None and msg.fleet_hops is not None:
        # Any member could take the next turn, and only one holds the history: say so rather
        # than answer a follow-up without it.
        return reject(ErrorCode.BAD_REQUEST, _FLEET_SESSION, body.id, body.reply_to)
    return _request(body, msg, topics, limits, v5_reply)


class _Rejector:
    """Builds a Rejection with the best reply address known so far."""

    def __init__(self, msg: Incoming, topics: Topics, v5_reply: ReplyAddress | None):
        self._msg = msg
        self._topics = topics
        self._v5_reply = v5_reply

    def __call__(
        self, code: ErrorCode, text: str, rid: str | None = None, reply_to: str | None = None
    ) -> Rejection:
        reply = self._v5_reply
        if reply is None and reply_to is not None:
            reply = ReplyAddress(reply_to)
        if reply is None and rid is not None:
            reply = ReplyAddress(self._msg.default_reply(self._topics, rid))
        return Rejection(code, text, rid, reply, self._msg.client)


def _payload_text(msg: Incoming, limits: LimitsConfig, reject: _Rejector) -> str | Rejection:
    """The payload as text, or why it cannot be one (size, encoding, NUL)."""
    if len(msg.client) > MAX_CLIENT_CHARS:
        # Rate-limit and dedupe state is kept per client name: bound what one may cost.
        return reject(ErrorCode.BAD_REQUEST, f"client name over {MAX_CLIENT_CHARS} characters")
    size = len(msg.payload)
    if size > limits.max_payload_bytes:
        return reject(
            ErrorCode.TOO_LONG,
            f"payload is {size} bytes; the limit is {limits.max_payload_bytes}",
        )
    if size == 0:
        return reject(ErrorCode.BAD_REQUEST, "empty payload: send a prompt or a JSON request")
    try:
        text = msg.payload.decode("utf-8")
    except UnicodeDecodeError:
        return reject(ErrorCode.BAD_REQUEST, "payload is neither UTF-8 text nor JSON")
    if "\x00" in text:
        return reject(ErrorCode.BAD_REQUEST, "payload contains NUL characters")
    return text


def _body(text: str, limits: LimitsConfig, reject: _Rejector) -> _Body | Rejection:
    """The validated body: plain text is a prompt with defaults, JSON is checked field by field."""
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        if not stripped:
            return reject(ErrorCode.BAD_REQUEST, "empty prompt")
        # Plain text: `mosquitto_pub -m "hello"` is a prompt with defaults.
        return _Body(prompt=text)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        return reject(ErrorCode.BAD_REQUEST, f"invalid JSON: {err.msg} at char {err.pos}")
    except RecursionError:
        # '[' * 100000 is valid-looking JSON that recurses past Python's stack limit.
        return reject(ErrorCode.BAD_REQUEST, "invalid JSON: nested too deeply")
    if not isinstance(raw, dict):
        return reject(ErrorCode.BAD_REQUEST, "a JSON request must be an object")
    # Find the reply address before validating, so even a bad request gets its answer.
    rid = raw.get("id") if isinstance(raw.get("id"), str) and _valid_id(raw["id"]) else None
    reply_to = raw.get("reply_to")
    reply_to = reply_to if isinstance(reply_to, str) and is_publishable(reply_to) else None
    try:
        body = _Body.model_validate(raw)
    except ValidationError as err:
        return reject(ErrorCode.BAD_REQUEST, _error_text(err), rid, reply_to)
    if body.reply_to is not None and reply_to is None:
        return reject(ErrorCode.BAD_REQUEST, "reply_to: not a topic one can publish to", rid)
    problem = _check_limits(body, limits)
    if problem:
        return reject(ErrorCode.BAD_REQUEST, problem, rid, reply_to)
    return body


def _request(
    body: _Body,
    msg: Incoming,
    topics: Topics,
    limits: LimitsConfig,
    v5_reply: ReplyAddress | None,
) -> Request:
    rid = body.id or new_id()
    if v5_reply is not None:
        reply = replace(v5_reply, delta_qos=body.delta_qos)
    elif body.reply_to is not None:
        reply = ReplyAddress(body.reply_to, delta_qos=body.delta_qos)
    else:
        # A named client's default replies go under its name: the LAN ACL lets it read there.
        reply = ReplyAddress(msg.default_reply(topics, rid), delta_qos=body.delta_qos)
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if body.stream is True:
        stream = StreamMode.TOKENS
    elif body.stream is False:
        stream = StreamMode.OFF
    else:
        stream = StreamMode(body.stream)
    return Request(
        id=rid,
        reply=reply,
        messages=tuple(m.message() for m in body.messages) if body.messages else None,
        prompt=body.prompt,
        system=body.system,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop,
        seed=body.seed,
        stream=stream,
        received_at=msg.received_at,
        deadline=msg.received_at + _time_allowed(body, msg, limits),
        priority=Priority[body.priority.upper()],
        client=msg.client,
        stream_interval_ms=body.stream_interval_ms,
        json_schema=body.json_schema,
        session=body.session,
        grammar=body.grammar,
        tools=tools.check_tools(body.tools) if body.tools else None,
        tool_choice=body.tool_choice,
    )


def _time_allowed(body: _Body, msg: Incoming, limits: LimitsConfig) -> float:
    """Seconds from arrival to the deadline: the tightest of the node's timeout, the request's
    deadline_ms and the message's own MQTT v5 expiry (a reply after it would reach no one)."""
    allowed = limits.request_timeout_s
    if body.deadline_ms is not None:
        allowed = min(allowed, body.deadline_ms / 1000)
    if msg.expiry_s is not None and msg.expiry_s > 0:
        allowed = min(allowed, float(msg.expiry_s))
    return allowed


def _valid_id(rid: str) -> bool:
    return _ID_RE.fullmatch(rid) is not None


def _check_limits(body: _Body, limits: LimitsConfig) -> str | None:
    if (body.messages is None) == (body.prompt is None):
        return "send exactly one of 'messages' or 'prompt'"
    if body.messages is not None and len(body.messages) > limits.max_messages:
        return f"messages: {len(body.messages)} given; the limit is {limits.max_messages}"
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    if len(stop) > limits.max_stop:
        return f"stop: {len(stop)} strings given; the limit is {limits.max_stop}"
    if any(not s for s in stop):
        return "stop: empty strings are not allowed"
    texts = [body.prompt or "", body.system or "", body.grammar or "", *stop]
    texts += [m.content for m in body.messages or ()]
    if any("\x00" in t for t in texts):
        return "NUL characters are not allowed in text"
    return check_structured(body)


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def delta_payload(rid: str, seq: int, text: str) -> bytes:
    return _encode({"type": "delta", "id": rid, "seq": seq, "text": text})


def done_payload(rid: str, done: Done, seq: int | None = None, node: str | None = None) -> bytes:
    body: dict[str, Any] = {
        "type": "done",
        "id": rid,
        **({"node": node} if node is not None else {}),
        "text": done.text,
        "finish_reason": done.finish_reason,
        "usage": {
            "prompt_tokens": done.usage.prompt_tokens,
            "completion_tokens": done.usage.completion_tokens,
        },
        "timings": {
            "queue_ms": round(done.timings.queue_ms, 2),
            "ttft_ms": round(done.timings.ttft_ms, 2),
            "total_ms": round(done.timings.total_ms, 2),
            "tokens_per_s": round(done.timings.tokens_per_s, 2),
        },
    }
    if seq is not None:
        body["seq"] = seq
    body.update(done.notes)
    return _encode(body)


def error_payload(
    rid: str | None, code: ErrorCode, message: str, extra: dict[str, Any] | None = None
) -> bytes:
    body: dict[str, Any] = {"type": "error", "id": rid, "code": str(code), "message": message}
    if extra:
        body.update(extra)
    return _encode(body)


# This process's own mark in its statuses: two live daemons with one node id publish different
# statuses even when all else is equal (frontends/mqtt_identity.py); a restart gets a new one.
INSTANCE = uuid.uuid4().hex[:12]


def status_payload(state: str, details: dict[str, Any] | None = None) -> bytes:
    body = {"state": state, "protocol": PROTOCOL_VERSION, **(details or {})}
    return _encode({**body, "instance": INSTANCE})


def telemetry_payload(body: dict[str, Any]) -> bytes:
    return _encode({"protocol": PROTOCOL_VERSION, **body})


def parse_cancel(payload: bytes) -> str | None:
    """The id named by a cancel message (JSON ``{"id": ...}`` or the bare id), or None."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            return None
        rid = raw.get("id") if isinstance(raw, dict) else None
        text = rid if isinstance(rid, str) else ""
    return text if text and _valid_id(text) else None


def hops_of(user_properties: Any) -> int:
    """The hand-back count a fleet request carries (0 when none, or not a number)."""
    for key, value in user_properties or ():
        if key == FLEET_HOPS:
            with contextlib.suppress(ValueError):
                return max(0, int(value))
    return 0
