"""The ollama API (github.com/ollama/ollama docs/api.md): request bodies into Requests, Done
into ollama's JSON, and the metadata answers from the cached ModelCard."""

from __future__ import annotations

import re
from typing import Any

from daemon import __version__
from daemon.config import Config
from daemon.frontends import http_structured as structured
from daemon.frontends.http_common import (
    HttpError,
    ModelCard,
    Sampling,
    check_model,
    encode,
    integer,
    iso_now,
    make_request,
    messages_of,
    number,
    stops,
)
from daemon.requests import Done, ErrorCode, Request

# The ollama release whose API this follows; clients that check a minimum version read this.
OLLAMA_VERSION = "0.9.0"
# ollama's expires_at for a model kept loaded for good (keep_alive: -1).
FOREVER = "2318-01-01T00:00:00Z"
NDJSON = "application/x-ndjson"


def version() -> dict[str, Any]:
    return {"version": OLLAMA_VERSION, "edgellm": __version__}


def tags(card: ModelCard, installed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The loaded model, then the other installed ones (http_pull.installed_tags)."""
    entry = {
        "name": card.tagged,
        "model": card.tagged,
        "modified_at": card.modified_at,
        "size": card.info.size_bytes,
        "digest": card.digest,
        "details": card.details(),
    }
    return {"models": [entry, *(installed or [])]}


def ps(card: ModelCard, n_ctx: int) -> dict[str, Any]:
    entry = {
        "name": card.tagged,
        "model": card.tagged,
        "size": card.info.size_bytes,
        "digest": card.digest,
        "details": card.details(),
        "expires_at": FOREVER,
        "size_vram": 0,
        "context_length": n_ctx,
    }
    return {"models": [entry]}


def show(card: ModelCard, body: dict[str, Any], cfg: Config, n_ctx: int) -> dict[str, Any]:
    check_model(card, body.get("model") or body.get("name"))
    meta = card.info.metadata
    arch = meta.get("general.architecture", "")
    model_info: dict[str, Any] = {k: v for k, v in meta.items() if k != "tokenizer.chat_template"}
    if arch:
        model_info[f"{arch}.context_length"] = card.info.n_ctx_train
    gen = cfg.generation
    parameters = "\n".join(
        [
            f"num_ctx {n_ctx}",
            f"temperature {gen.temperature}",
            f"top_p {gen.top_p}",
            f"top_k {gen.top_k}",
            f"repeat_penalty {gen.repeat_penalty}",
            f"num_predict {gen.max_tokens}",
        ]
    )
    return {
        "modelfile": f"# served by edgellm {__version__}\nFROM {card.info.path}\n",
        "parameters": parameters,
        "template": meta.get("tokenizer.chat_template", ""),
        "details": card.details(),
        "model_info": model_info,
        "capabilities": ["completion", "tools"] if card.info.tools else ["completion"],
        "modified_at": card.modified_at,
    }


def _sampling(body: dict[str, Any], cfg: Config) -> Sampling:
    """ollama's options: temperature, top_p, num_predict, stop, seed, num_ctx; others ignored.
    Also the body's `think` and `keep_alive`, checked as ollama checks them."""
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise HttpError(400, "options: an object is required")
    predict = integer(options.get("num_predict"), "options.num_predict", -2, 1 << 30)
    keep_alive_s(body.get("keep_alive"))
    return Sampling(
        max_tokens=predict if predict is not None and predict > 0 else None,
        temperature=number(options.get("temperature"), "options.temperature", 0.0, 5.0),
        top_p=number(options.get("top_p"), "options.top_p", 0.0, 1.0) or None,
        stop=stops(options.get("stop"), cfg),
        seed=integer(options.get("seed"), "options.seed", -(2**31), 2**32 - 1),
        # The context grows to num_ctx between jobs as far as the model and memory allow; a
        # prompt that still does not fit gets a 400 naming both sizes, never a cut prompt.
        n_ctx=integer(options.get("num_ctx"), "options.num_ctx", 1, 1 << 30),
        think=think_of(body.get("think")),
    )


# ollama's duration units (Go's time.ParseDuration); a bare number is seconds.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")


def keep_alive_s(value: Any) -> float | None:
    """keep_alive in every form ollama takes: seconds (-1: forever, 0: unload now), or a
    duration such as "5m", "1h30m", "-1m". None when absent; a 400 when it is none of these.
    The model stays loaded whatever it says: this node serves one model (docs/HTTP.md)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.lstrip("+-")
        try:
            return sign * float(text)
        except ValueError:
            pass
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sign * sum(float(n) * _UNITS[u] for n, u in parts)
    raise HttpError(400, 'keep_alive: seconds (-1: forever) or a duration such as "5m"')


def think_of(value: Any) -> bool | None:
    """ollama's `think`: true/false, or a level ("low", "medium", "high": on)."""
    if value is None or isinstance(value, bool):
        return value
    if value in ("low", "medium", "high"):
        return True
    raise HttpError(400, 'think: true, false, "low", "medium" or "high"')


def stream_of(body: dict[str, Any]) -> bool:
    """ollama's `stream`: true unless the body says false."""
    stream = body.get("stream", True)  # ollama streams unless told not to
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise HttpError(400, "stream: true or false")
    return stream


def chat_request(body: dict[str, Any], card: ModelCard, cfg: Config, client: str) -> Request:
    check_model(card, body.get("model"))
    messages = messages_of(body.get("messages"), cfg)
    sampling = _sampling(body, cfg)
    if sampling.seed is not None and sampling.seed < 0:
        sampling.seed = None  # ollama's -1: a random seed
    req = make_request(client, sampling, stream_of(body), messages=messages, cfg=cfg)
    schema = structured.ollama_format(body.get("format"))
    return structured.structured(req, schema, structured.tools_of(body.get("tools")))


def generate_request(body: dict[str, Any], card: ModelCard, cfg: Config, client: str) -> Request:
    check_model(card, body.get("model"))
    prompt, system = body.get("prompt"), body.get("system")
    if not isinstance(prompt, str) or "\x00" in prompt:
        raise HttpError(400, "prompt: a string is required")
    if system is not None and not isinstance(system, str):
        raise HttpError(400, "system: a string is required")
    if body.get("images"):
        raise HttpError(400, "images: this model reads text only")
    sampling = _sampling(body, cfg)
    if sampling.seed is not None and sampling.seed < 0:
        sampling.seed = None
    req = make_request(
        client, sampling, stream_of(body), prompt=prompt, system=system or None, cfg=cfg
    )
    return structured.structured(req, structured.ollama_format(body.get("format")))


class OllamaWire:
    """Done and deltas as ollama's /api/chat (message) or /api/generate (response) lines."""

    content_type = NDJSON

    def __init__(self, model: str, chat: bool):
        self._model = model
        self._chat = chat

    def _line(
        self, text: str, done: bool, calls: list[Any] | None = None, thinking: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._model, "created_at": iso_now()}
        if self._chat:
            body["message"] = {"role": "assistant", "content": text}
            if calls:
                body["message"]["tool_calls"] = calls
            if thinking:
                body["message"]["thinking"] = thinking
        else:
            body["response"] = text
        body["done"] = done
        return body

    def delta(self, text: str) -> bytes:
        return encode(self._line(text, False)) + b"\n"

    def final(self, done: Done) -> bytes:
        line = self._line("", True, structured.ollama_calls(done), done.notes.get("thinking"))
        return encode(self._summary(line, done)) + b"\n"

    def body(self, done: Done) -> dict[str, Any]:
        calls, thinking = structured.ollama_calls(done), done.notes.get("thinking")
        return self._summary(self._line(done.text, True, calls, thinking), done)

    def _summary(self, body: dict[str, Any], done: Done) -> dict[str, Any]:
        t = done.timings
        prefill_ms = max(0.0, t.ttft_ms - t.queue_ms)
        body.update(
            # ollama says "stop" after tool calls too; the calls are in message.tool_calls.
            done_reason="stop" if done.finish_reason == "tool_calls" else done.finish_reason,
            total_duration=int(t.total_ms * 1e6),
            load_duration=int(t.queue_ms * 1e6),
            # What ollama counts: the prompt tokens evaluated for this request, not those its
            # KV cache already held (docs/HTTP.md).
            prompt_eval_count=done.usage.prompt_tokens - done.usage.cached_tokens,
            prompt_eval_duration=int(prefill_ms * 1e6),
            eval_count=done.usage.completion_tokens,
            eval_duration=int(max(0.0, t.total_ms - t.ttft_ms) * 1e6),
        )
        return body

    def error_body(self, code: str, message: str) -> dict[str, Any]:
        return {"error": message}

    def stream_error(self, code: ErrorCode, message: str) -> bytes:
        return encode({"error": message}) + b"\n"
