"""The Wyoming wire format for the handle service: reading events with bounds, the `info`
answer, and a `transcript` parsed into a Request (or a Rejection saying what is wrong).

Tested against the `wyoming` package 1.10.2, the floor in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from typing import Any

from wyoming.event import Event
from wyoming.info import Attribution, HandleModel, HandleProgram, Info

from daemon import __version__
from daemon.config import Config
from daemon.requests import (
    SESSION_PATTERN,
    ErrorCode,
    Priority,
    Rejection,
    ReplyAddress,
    Request,
    StreamMode,
    new_id,
)

PROGRAM = "edgellm"
# The StreamReader's line limit (asyncio's default, 64 KiB) bounds the JSON header line; this
# bounds the data and payload blocks a header announces, read before anything is parsed.
MAX_BLOCK_BYTES = 1024 * 1024

_SESSION_RE = re.compile(SESSION_PATTERN)


class BadEvent(Exception):
    """What arrived is not a usable Wyoming event. fatal: the stream's framing is lost (an
    oversized or unreadable block), so the connection must close after the error reply."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.message = message
        self.fatal = fatal


def _length(header: dict[str, Any], key: str) -> int:
    value = header.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadEvent(f"{key} must be a non-negative integer", fatal=True)
    if value > MAX_BLOCK_BYTES:
        raise BadEvent(f"{key} is {value} bytes; the limit is {MAX_BLOCK_BYTES}", fatal=True)
    return value


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event, None at the end of the stream, or BadEvent.

    wyoming's own async_read_event reads any announced length and closes the connection
    without a word on bad JSON; a front door must say what was wrong instead.
    """
    try:
        line = await reader.readline()
    except ValueError:  # asyncio: the line ran past the reader's limit
        raise BadEvent("event header line is too long", fatal=True) from None
    if not line:
        return None
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):
        raise BadEvent("event header is not a JSON object") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise BadEvent("event header needs a string 'type'")
    data = header.get("data") or {}
    data_length, payload_length = _length(header, "data_length"), _length(header, "payload_length")
    try:
        block = await reader.readexactly(data_length) if data_length else b""
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        return None
    if block:
        try:
            extra = json.loads(block)
        except (ValueError, RecursionError):
            raise BadEvent("event data is not a JSON object") from None
        if not isinstance(extra, dict) or not isinstance(data, dict):
            raise BadEvent("event data is not a JSON object")
        data = {**data, **extra}
    if not isinstance(data, dict):
        raise BadEvent("event data is not a JSON object")
    return Event(type=header["type"], data=data, payload=payload)


def info_event(cfg: Config, model: str, metadata: dict[str, str]) -> Event:
    """The `info` answer to `describe`: one handle program, the loaded model as its model."""
    author = metadata.get("general.author") or metadata.get("general.organization") or model
    url = metadata.get("general.url") or metadata.get("general.source.url") or ""
    languages = list(cfg.wyoming.languages)
    handle_model = HandleModel(
        name=model,
        attribution=Attribution(name=author, url=url),
        installed=True,
        description=metadata.get("general.name") or model,
        version=None,
        languages=languages,
    )
    program = HandleProgram(
        # Home Assistant names the agent after the program: each node's own name, or a second
        # board becomes conversation.edgellm_2 with nothing to tell the two apart.
        name=f"{PROGRAM} {cfg.node_id}",
        attribution=Attribution(name=PROGRAM, url=""),
        installed=True,
        description=f"edgellm: {model}, a local LLM",
        version=__version__,
        models=[handle_model],
        supports_handled_streaming=cfg.wyoming.streaming,
    )
    return Info(handle=[program]).event()


def context_of(event: Event) -> dict[str, Any] | None:
    """The transcript's context (Home Assistant's conversation_id ...), echoed in the answer."""
    context = event.data.get("context")
    return context if isinstance(context, dict) else None


def parse_transcript(event: Event, cfg: Config, client: str) -> Request | Rejection:
    """A `transcript` as a Request: its text is the user's prompt; a bad one, a Rejection."""
    received = time.monotonic()
    rid = new_id()
    reply = ReplyAddress(f"wyoming:{rid}")
    text = event.data.get("text")
    if not isinstance(text, str):
        message = "transcript needs a text string"
        return Rejection(ErrorCode.BAD_REQUEST, message, rid, reply, client)
    if not text.strip():
        return Rejection(
            ErrorCode.BAD_REQUEST, "empty transcript: nothing to answer", rid, reply, client
        )
    size = len(text.encode("utf-8", "replace"))
    if size > cfg.limits.max_payload_bytes:
        message = f"transcript is {size} bytes; the limit is {cfg.limits.max_payload_bytes}"
        return Rejection(ErrorCode.TOO_LONG, message, rid, reply, client)
    if "\x00" in text:
        return Rejection(
            ErrorCode.BAD_REQUEST, "transcript contains NUL characters", rid, reply, client
        )
    return Request(
        id=rid,
        reply=reply,
        messages=None,
        prompt=text,
        system=None,
        max_tokens=None,
        temperature=None,
        top_p=None,
        stop=(),
        seed=None,
        # Sentences, so a satellite's speech engine can start on the first one.
        stream=StreamMode.SENTENCES if cfg.wyoming.streaming else StreamMode.OFF,
        received_at=received,
        deadline=received + cfg.limits.request_timeout_s,
        priority=Priority.INTERACTIVE,
        client=client,
        session=session_of(context_of(event), cfg),
    )


def session_of(context: dict[str, Any] | None, cfg: Config) -> str | None:
    """The session of a transcript: Home Assistant's conversation_id from its context, so a
    follow-up ("and tomorrow?") has the turns before it. An id that is not a valid session id
    (too long, odd characters) is hashed into one; none, or sessions off: no session."""
    cid = (context or {}).get("conversation_id")
    if not isinstance(cid, str) or not cid or not cfg.sessions.enabled:
        return None
    if _SESSION_RE.fullmatch(cid):
        return cid
    return hashlib.sha256(cid.encode("utf-8", "replace")).hexdigest()[:32]
