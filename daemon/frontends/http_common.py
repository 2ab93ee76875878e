"""What the ollama and OpenAI HTTP APIs share: errors, the per-request Answers, the model card,
and building a Request from the fields both APIs carry. No socket work here (http_server.py)."""

from __future__ import annotations

import hashlib
import json
import math
import queue
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.config import Config
from daemon.engine import ModelInfo
from daemon.intake import log_request
from daemon.requests import (
    ChatMessage,
    Done,
    ErrorCode,
    Rejection,
    ReplyAddress,
    Request,
    StreamMode,
    ToolCall,
    new_id,
)

# HTTP status per intake/engine error code. A prompt over the context is the engine's too_long:
# a 400, as ollama answers it; a body over http.max_body_bytes is refused earlier with a 413.
STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.TOO_LONG: 400,
    ErrorCode.BUSY: 503,
    # The client is usually gone by then; a shutdown's cancel reaches one still listening.
    ErrorCode.CANCELLED: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.INTERNAL: 500,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.POLICY: 403,
}
ROLES = {"system", "user", "assistant", "tool"}


class HttpError(Exception):
    """A request answered with an error status; code is the edgellm error code behind it."""

    def __init__(self, status: int, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers: dict[str, str] = {}


def encode(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Exchange:
    """One HTTP request's intake.Answers: the engine's replies become events that the request's
    handler thread takes off, in order (the engine never blocks on a slow socket)."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def delta(self, request: Request, seq: int, text: str) -> None:
        self.events.put(("delta", text))

    def done(self, request: Request, done: Done) -> bytes:
        self.events.put(("done", done))
        return encode({"id": request.id, "text": done.text})

    def error(self, request: Request, code: ErrorCode, message: str, extra: dict) -> bytes:
        self.events.put(("error", (code, message, extra)))
        return encode({"id": request.id, "code": str(code), "message": message})

    def again(self, request: Request, payload: bytes) -> None:
        # Every HTTP request gets a fresh id, so intake never sees one twice.
        self.events.put(("error", (ErrorCode.INTERNAL, "duplicate request id", {})))

    def refuse(self, rejection: Rejection) -> None:
        self.events.put(("error", (rejection.code, rejection.message, {})))
        log_request(rejection.id, rejection.client, str(rejection.code), detail=rejection.message)


@dataclass(frozen=True)
class ModelCard:
    """What the metadata endpoints say about the loaded model; built once, read without locks."""

    name: str  # edgellm's catalogue name, e.g. smollm2-135m
    info: ModelInfo
    modified_at: str
    digest: str
    loaded_at: float

    @classmethod
    def of(cls, info: ModelInfo, mtime: float) -> ModelCard:
        return cls(
            name=info.name,
            info=info,
            modified_at=datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z"),
            digest=stand_in_digest(info.path, info.size_bytes, mtime),
            loaded_at=time.time(),
        )

    @property
    def tagged(self) -> str:
        """The ollama-style name with its tag (ollama clients compare names with the tag)."""
        return f"{self.name}:latest"

    def matches(self, model: Any) -> bool:
        return isinstance(model, str) and model in (self.name, self.tagged)

    def details(self) -> dict[str, Any]:
        meta = self.info.metadata
        family = meta.get("general.architecture", "")
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family] if family else None,
            "parameter_size": meta.get("general.size_label", ""),
            "quantization_level": _quantization(self.info.path),
        }


def _quantization(path: str) -> str:
    """Q4_K_M, Q8_0, F16 ... as the file name says (the GGUF file_type is a bare number)."""
    stem = path.rsplit("/", 1)[-1].upper()
    for part in reversed(stem.removesuffix(".GGUF").replace(".", "-").split("-")):
        if part[:1] in ("Q", "F", "I") and any(c.isdigit() for c in part):
            return part
    return ""


def check_model(card: ModelCard, model: Any) -> None:
    if model is None or model == "":
        raise HttpError(400, "model is required", "bad_request")
    if not card.matches(model):
        raise HttpError(
            404,
            f"model '{model}' not found; this node serves '{card.tagged}'",
            "model_not_found",
        )


def messages_of(raw: Any, cfg: Config) -> tuple[ChatMessage, ...]:
    """Chat messages from either API: role, text, an assistant's tool calls, a tool result's
    call id; images refused. A model whose template takes no tools reads a tool result as a
    user turn (engine/tools.py)."""
    if not isinstance(raw, list) or not raw:
        raise HttpError(400, "messages: a non-empty list is required")
    if len(raw) > cfg.limits.max_messages:
        raise HttpError(400, f"messages: {len(raw)} given; the limit is {cfg.limits.max_messages}")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise HttpError(400, f"messages[{i}]: an object with role and content is required")
        role = m.get("role")
        if role not in ROLES:
            raise HttpError(400, f"messages[{i}].role: one of system, user, assistant, tool")
        if m.get("images"):
            raise HttpError(400, f"messages[{i}].images: this model reads text only")
        text = _text(m.get("content"), f"messages[{i}].content")
        calls = _calls(m.get("tool_calls"), f"messages[{i}].tool_calls")
        call_id = m.get("tool_call_id")
        call_id = call_id if role == "tool" and isinstance(call_id, str) else None
        out.append(ChatMessage(role, text, calls if role == "assistant" else (), call_id))
    return tuple(out)


def _calls(raw: Any, where: str) -> tuple[ToolCall, ...]:
    """An assistant's tool calls in either API's shape: {"function": {"name", "arguments"}},
    the arguments an object (ollama) or a JSON string (OpenAI), with an "id" (OpenAI)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > 64:
        raise HttpError(400, f"{where}: a list of calls is required")
    calls = []
    for j, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(name := fn.get("name"), str):
            raise HttpError(
                400, f'{where}[{j}]: {{"function": {{"name", "arguments"}}}} is required'
            )
        args = fn.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = None
        if not isinstance(args, dict):
            raise HttpError(400, f"{where}[{j}].function.arguments: a JSON object is required")
        cid = call.get("id")
        calls.append(ToolCall(cid if isinstance(cid, str) else "", name, args))
    return tuple(calls)


def _text(content: Any, where: str) -> str:
    """Message text: a string, null (an assistant turn with tool calls), or OpenAI text parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise HttpError(400, f"{where}: only text parts are supported")
            parts.append(_text(part.get("text"), where))
        return "".join(parts)
    if not isinstance(content, str):
        raise HttpError(400, f"{where}: a string is required")
    if "\x00" in content:
        raise HttpError(400, f"{where}: NUL characters are not allowed")
    return content


@dataclass
class Sampling:
    """The sampling fields both APIs carry, checked."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n_ctx: int | None = None  # the context the client asks for (ollama's num_ctx)
    think: bool | None = None  # reasoning text wanted (True), never spoken (False), unsaid


def number(value: Any, name: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise HttpError(400, f"{name}: a number from {low} to {high} is required")
    return float(value)


def integer(value: Any, name: str, low: int, high: int) -> int | None:
    """An integer field. A number with a fraction is cut to its integer part, as ollama and
    llama-server read one (Home Assistant's options form stores num_ctx as 8192.0)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HttpError(400, f"{name}: an integer from {low} to {high} is required")
    return value


def stops(value: Any, cfg: Config) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if items is None:
        return ()
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise HttpError(400, "stop: a non-empty string or a list of them is required")
    if len(items) > cfg.limits.max_stop:
        raise HttpError(400, f"stop: {len(items)} given; the limit is {cfg.limits.max_stop}")
    return tuple(items)


def make_request(
    client: str,
    sampling: Sampling,
    stream: bool,
    messages: tuple[ChatMessage, ...] | None = None,
    prompt: str | None = None,
    system: str | None = None,
    *,
    cfg: Config,
) -> Request:
    """A Request for intake: a fresh id, the node's deadline, the HTTP client's name."""
    now = time.monotonic()
    rid = new_id()
    return Request(
        id=rid,
        reply=ReplyAddress(f"http/{rid}"),
        messages=messages,
        prompt=prompt,
        system=system,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        stop=sampling.stop,
        seed=sampling.seed,
        n_ctx=sampling.n_ctx,
        think=sampling.think,
        stream=StreamMode.TOKENS if stream else StreamMode.OFF,
        received_at=now,
        deadline=now + cfg.limits.request_timeout_s,
        client=client,
    )


def stand_in_digest(path: str | Path, size: int, mtime: float) -> str:
    """A model's digest for ollama's listings, from path, size and mtime: hashing the weights
    would read the whole file (seconds on an SD card) for a field no client checks."""
    return hashlib.sha256(f"{path}:{size}:{mtime}".encode()).hexdigest()
