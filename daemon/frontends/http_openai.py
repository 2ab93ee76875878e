"""The OpenAI chat completions API (/v1/models, /v1/chat/completions): request bodies into
Requests, Done into OpenAI's JSON and server-sent events, errors in OpenAI's error shape."""

from __future__ import annotations

import time
from typing import Any

from daemon.config import Config
from daemon.frontends import http_structured as structured
from daemon.frontends.http_common import (
    HttpError,
    ModelCard,
    Sampling,
    check_model,
    encode,
    integer,
    make_request,
    messages_of,
    number,
    stops,
)
from daemon.requests import Done, ErrorCode, Request

SSE = "text/event-stream"
DONE_EVENT = b"data: [DONE]\n\n"
# OpenAI's error `type` per edgellm code; the `code` field carries edgellm's own.
ERROR_TYPES = {
    "bad_request": "invalid_request_error",
    "too_long": "invalid_request_error",
    "model_not_found": "invalid_request_error",
    "unauthorized": "authentication_error",
    "policy": "permission_error",
    "rate_limited": "rate_limit_error",
}


def models(card: ModelCard) -> dict[str, Any]:
    entry = {
        "id": card.name,
        "object": "model",
        "created": int(card.loaded_at),
        "owned_by": "edgellm",
    }
    return {"object": "list", "data": [entry]}


def error_body(code: str, message: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(code, "server_error" if code == "internal" else "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def chat_request(body: dict[str, Any], card: ModelCard, cfg: Config, client: str) -> Request:
    check_model(card, body.get("model"))
    messages = messages_of(body.get("messages"), cfg)
    n = integer(body.get("n"), "n", 1, 1)
    del n  # one choice only
    schema = structured.openai_format(body.get("response_format"))
    offered, choice = structured.openai_choice(
        body.get("tool_choice"), structured.tools_of(body.get("tools"))
    )
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    sampling = Sampling(
        max_tokens=integer(limit, "max_tokens", 1, 1 << 30),
        temperature=number(body.get("temperature"), "temperature", 0.0, 2.0),
        top_p=number(body.get("top_p"), "top_p", 0.0, 1.0) or None,
        stop=stops(body.get("stop"), cfg),
        seed=integer(body.get("seed"), "seed", 0, 2**32 - 1),
        think=_think(body),
    )
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise HttpError(400, "stream: true or false")
    req = make_request(client, sampling, stream, messages=messages, cfg=cfg)
    return structured.structured(req, schema, offered, choice)


def _think(body: dict[str, Any]) -> bool | None:
    """Reasoning wanted? OpenAI's reasoning_effort ("none": off) or llama-server's
    chat_template_kwargs.enable_thinking. Unsaid: reasoning_content carries it, as there."""
    effort = body.get("reasoning_effort")
    if effort is not None:
        return effort != "none"
    kwargs = body.get("chat_template_kwargs")
    enable = kwargs.get("enable_thinking") if isinstance(kwargs, dict) else None
    return enable if isinstance(enable, bool) else None


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _usage(done: Done) -> dict[str, Any]:
    """OpenAI's usage: every prompt token, of which cached_tokens came from the KV cache."""
    u = done.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _message(done: Done) -> dict[str, Any]:
    calls = structured.openai_calls(done)
    message: dict[str, Any] = {"role": "assistant", "content": done.text}
    if calls:
        message.update(content=done.text or None, tool_calls=calls)
    if done.notes.get("thinking"):
        message["reasoning_content"] = done.notes["thinking"]  # llama-server's field
    return message


class OpenAIWire:
    """Done and deltas as chat.completion objects and chat.completion.chunk events."""

    content_type = SSE

    def __init__(self, model: str, rid: str, usage: bool):
        self._model = model
        self._id = f"chatcmpl-{rid}"
        self._created = int(time.time())
        self._usage = usage
        self._first = True

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    @staticmethod
    def _event(obj: dict[str, Any]) -> bytes:
        return b"data: " + encode(obj) + b"\n\n"

    def delta(self, text: str) -> bytes:
        return self._event(self._chunk(self._role({"content": text}), None))

    def _role(self, delta: dict[str, Any]) -> dict[str, Any]:
        if self._first:
            delta["role"] = "assistant"  # the first chunk names the role, as OpenAI's does
            self._first = False
        return delta

    def final(self, done: Done) -> bytes:
        out = b""
        calls = structured.openai_calls(done, index=True)
        thinking = done.notes.get("thinking")
        if thinking or (self._first and not calls):
            # Nothing was streamed (an empty reply): the role still comes first, with an empty
            # content, as OpenAI and llama-server send it (Home Assistant's reader takes a
            # stream without a role for no response at all).
            delta: dict[str, Any] = {"content": ""} if self._first else {}
            if thinking:
                delta["reasoning_content"] = thinking
            out += self._event(self._chunk(self._role(delta), None))
        for call in calls:
            # One call per chunk, with its index and id: Home Assistant's stream reader takes
            # only delta.tool_calls[0] of each chunk.
            out += self._event(self._chunk(self._role({"tool_calls": [call]}), None))
        # Token counts even without stream_options.include_usage (Home Assistant never asks), as
        # llama-server's `timings` on its last chunk: prompt_n evaluated, cache_n reused.
        u = done.usage
        timings: dict[str, Any] = {"prompt_n": u.prompt_tokens - u.cached_tokens}
        timings["cache_n"] = u.cached_tokens
        timings |= {"predicted_n": u.completion_tokens, "ttft_ms": done.timings.ttft_ms}
        out += self._event({**self._chunk({}, done.finish_reason), "timings": timings})
        if self._usage:
            last = {**self._chunk({}, None), "choices": [], "usage": _usage(done)}
            out += self._event(last)
        return out + DONE_EVENT

    def body(self, done: Done) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "message": _message(done),
                    "finish_reason": done.finish_reason,
                }
            ],
            "usage": _usage(done),
        }

    def error_body(self, code: str, message: str) -> dict[str, Any]:
        return error_body(code, message)

    def stream_error(self, code: ErrorCode, message: str) -> bytes:
        return self._event(error_body(str(code), message)) + DONE_EVENT
