"""The HTTP front door: ollama's API and OpenAI's chat completions on one port (docs/HTTP.md).

Like the MQTT door it is an adapter: each generation becomes a Request for Intake.take, so the
allow-list, rate limit, queue, deadlines, governor and cancel apply alike. Metadata endpoints
answer from the loaded model's ModelCard and never touch the engine's queue. A request that
names another installed model swaps it in first (daemon/slot.py), as ollama loads a model.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import queue
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import structlog

from daemon.config import Config
from daemon.frontends import http_ollama as ollama
from daemon.frontends import http_openai as openai
from daemon.frontends import http_pull as pull
from daemon.frontends.http_common import STATUS, Exchange, HttpError, ModelCard
from daemon.frontends.http_server import Bounds, Handler, Server
from daemon.intake import Intake
from daemon.requests import SESSION_PATTERN, Done, ErrorCode, Request, StreamMode
from daemon.slot import ModelSlot, SwapError

log = structlog.get_logger(__name__)

# How often a waiting handler looks whether its client hung up (and cancels if so).
POLL_S = 0.2
# The request header naming a session (the node keeps its turns; docs/HTTP.md).
SESSION_HEADER = "X-Edgellm-Session"
_SESSION_RE = re.compile(SESSION_PATTERN)
# How long a request that names another model waits for it to load (ollama waits too).
LOAD_WAIT_S = 300.0


class Wire(Protocol):
    """One API's encoding of a generation's replies."""

    content_type: str

    def delta(self, text: str) -> bytes: ...

    def final(self, done: Done) -> bytes: ...

    def body(self, done: Done) -> dict[str, Any]: ...

    def error_body(self, code: str, message: str) -> dict[str, Any]: ...

    def stream_error(self, code: ErrorCode, message: str) -> bytes: ...


class HttpFrontDoor:
    """Serves the HTTP API on its own threads; start() says whether it is listening."""

    def __init__(
        self,
        cfg: Config,
        intake: Intake,
        counters: Counter,
        slot: ModelSlot,
        api_key: str | None,
    ):
        self.cfg = cfg
        self._intake = intake
        self._counters = counters
        self._slot = slot
        self._card: ModelCard | None = None
        self._key = api_key.encode() if api_key else None
        self._allowed = cfg.http.clients_allowed
        self._pulls = pull.Puller(cfg.model.dir, cfg.http.allow_pull)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def card(self) -> ModelCard:
        """The loaded model's card (made anew after a swap; the last one while none is loaded)."""
        info, card = self._slot.info, self._card
        if info is not None and (card is None or card.info is not info):
            card = self._card = ModelCard.of(info, os.stat(info.path).st_mtime)
        assert card is not None, "the HTTP door starts once a model is loaded"
        return card

    def _n_ctx(self) -> int:
        engine = self._slot.engine
        return engine.n_ctx if engine is not None else self.card.info.n_ctx

    def _select(self, model: Any) -> None:
        """Load the model a request names when it is installed but not loaded (or the node has
        unloaded it), waiting while it loads; other names are left to check_model's 404."""
        if not isinstance(model, str) or not model.strip():
            return
        card, name = self.card, model.strip().removesuffix(":latest")
        if card.matches(model):
            if self._slot.state == "loaded":
                return
            name = card.name
        elif not self._slot.installed(name):
            return
        try:
            self._slot.want(name, LOAD_WAIT_S)
        except SwapError as err:
            code = {404: "model_not_found", 503: "busy"}.get(err.status, "model_unavailable")
            refused = HttpError(err.status, err.message, code)
            if err.retry_after_s is not None:
                refused.headers["Retry-After"] = retry_after(err.retry_after_s)
            raise refused from None

    def start(self) -> bool:
        """Listen on http.bind:http.port; False (logged) when it cannot, e.g. the port is taken."""
        http = self.cfg.http
        try:
            bounds = Bounds(http.max_connections, http.wait_timeout_s, http.body_timeout_s)
            server = Server((http.bind, http.port), bounds)
        except OSError as err:
            log.error("http_unavailable", bind=http.bind, port=http.port, error=str(err))
            return False
        server.route = self._route
        server.node_id = self.cfg.node_id
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="http", daemon=True
        )
        self._thread.start()
        log.info("http_listening", bind=http.bind, port=self.port, auth=self._key is not None)
        return True

    def stop(self) -> None:
        """Stop listening; handlers still streaming end with their job (the engine stops it)."""
        self._pulls.stop()
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        log.info("http_stopped")

    # -- routing --------------------------------------------------------------------------------

    def _route(self, h: Handler, method: str) -> None:
        path = h.path_only
        wire_errors = openai.error_body if path.startswith("/v1/") else _ollama_error
        try:
            self._admit(h)
            self._dispatch(h, method, path)
        except HttpError as err:
            # The body may be unread (an error before read_json): the connection cannot go on.
            h.close_connection = True
            self._counters[f"http_{err.status}"] += 1
            if err.status >= 500 or err.status in (401, 403, 404, 413):
                log.info("http_refused", path=path, status=err.status, detail=err.message)
            h.send_json(err.status, wire_errors(err.code, err.message), err.headers)
        except Exception:
            log.exception("http_handler_failed", path=path)
            h.close_connection = True
            h.send_json(500, wire_errors("internal", "internal error; see the daemon's log"))

    def _admit(self, h: Handler) -> None:
        """The address allow-list, then the bearer key (constant-time compare)."""
        if self._allowed is not None:
            addr = ipaddress.ip_address(h.client_address[0])
            if not any(addr in net for net in self._allowed):
                h.close_connection = True
                raise HttpError(403, "this address may not use this node", "policy")
        if self._key is not None:
            auth = h.headers.get("Authorization", "")
            given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
            if not hmac.compare_digest(given, self._key):
                err = HttpError(401, "a valid bearer key is required", "unauthorized")
                err.headers["WWW-Authenticate"] = "Bearer"
                raise err

    def _dispatch(self, h: Handler, method: str, path: str) -> None:
        get = {
            "/": lambda: {"status": "edgellm is running"},
            "/api/version": ollama.version,
            "/api/tags": lambda: ollama.tags(
                self.card, pull.installed_tags(self.cfg.model.dir, self.card)
            ),
            "/api/ps": lambda: (
                ollama.ps(self.card, self._n_ctx()) if self._slot.engine else {"models": []}
            ),
            "/v1/models": lambda: openai.models(self.card),
        }
        if method in ("GET", "HEAD") and path in get:
            h.send_json(200, get[path]())
            return
        post = {
            "/api/show": self._show,
            "/api/pull": self._pull,
            "/api/chat": self._ollama_chat,
            "/api/generate": self._ollama_generate,
            "/v1/chat/completions": self._openai_chat,
        }
        if path in post and method == "POST":
            post[path](h, h.read_json(self.cfg.http.max_body_bytes))
            return
        if path in get or path in post:
            raise HttpError(405, f"{method} is not allowed on {path}")
        raise HttpError(404, f"no endpoint {path}; see docs/HTTP.md", "not_found")

    @property
    def _client_of(self) -> Callable[[Handler], str]:
        return lambda h: f"http:{h.client_address[0]}"

    # -- endpoints ------------------------------------------------------------------------------

    def _show(self, h: Handler, body: dict[str, Any]) -> None:
        # The loaded model only, and never a swap: ollama's show reads a model without loading it.
        h.send_json(200, ollama.show(self.card, body, self.cfg, self._n_ctx()))

    def _pull(self, h: Handler, body: dict[str, Any]) -> None:
        # On this handler's thread, following a download on the pull thread (http_pull.py).
        self._pulls.serve(h, body, self.card)

    def _ollama_chat(self, h: Handler, body: dict[str, Any]) -> None:
        if body.get("messages") in (None, []):
            self._load_or_unload(h, body, {"message": {"role": "assistant", "content": ""}})
            return
        self._select(body.get("model"))
        req = ollama.chat_request(body, self.card, self.cfg, self._client_of(h))
        self._generate(h, req, ollama.OllamaWire(self.card.tagged, chat=True))
        self._unload_after(body)

    def _ollama_generate(self, h: Handler, body: dict[str, Any]) -> None:
        if body.get("prompt") in (None, ""):
            self._load_or_unload(h, body, {"response": ""})
            return
        self._select(body.get("model"))
        req = ollama.generate_request(body, self.card, self.cfg, self._client_of(h))
        self._generate(h, req, ollama.OllamaWire(self.card.tagged, chat=False))
        self._unload_after(body)

    def _load_or_unload(self, h: Handler, body: dict[str, Any], empty: dict[str, Any]) -> None:
        """ollama's way to load a model, or with keep_alive 0 to unload it: a request with
        nothing to generate (docs/HTTP.md, Models)."""
        unload = ollama.keep_alive_s(body.get("keep_alive")) == 0
        if unload:
            ollama.check_model(self.card, body.get("model"))
            self._unload()
        else:
            self._select(body.get("model"))
            ollama.check_model(self.card, body.get("model"))
        reply = {"model": self.card.tagged, "created_at": ollama.iso_now(), **empty}
        h.send_json(200, {**reply, "done": True, "done_reason": "unload" if unload else "load"})

    def _unload_after(self, body: dict[str, Any]) -> None:
        """keep_alive 0 on a generation: answered, then the model is unloaded."""
        if ollama.keep_alive_s(body.get("keep_alive")) == 0:
            with contextlib.suppress(HttpError):
                self._unload()

    def _unload(self) -> None:
        try:
            self._slot.unload()
        except SwapError as err:
            raise HttpError(err.status, err.message, "busy") from None

    def _openai_chat(self, h: Handler, body: dict[str, Any]) -> None:
        self._select(body.get("model"))
        req = openai.chat_request(body, self.card, self.cfg, self._client_of(h))
        usage = openai.include_usage(body)
        self._generate(h, req, openai.OpenAIWire(self.card.name, req.id, usage))

    # -- a generation ---------------------------------------------------------------------------

    def _generate(self, h: Handler, req: Request, wire: Wire) -> None:
        """Hand the request to intake and relay its replies until the terminal one.

        Headers wait for the first reply, so a refusal or a prompt over the context still gets
        its own status code; a client that hangs up is cancelled (Intake.cancel).
        """
        req = self._with_session(h, req)
        exchange = Exchange()
        self._intake.take(req, exchange)
        streaming = req.stream is not StreamMode.OFF
        started = cancelled = False
        while True:
            try:
                kind, value = exchange.events.get(timeout=POLL_S)
            except queue.Empty:
                if not cancelled and h.client_gone():
                    cancelled = self._cancel(h, req)
                continue
            if kind == "delta" and streaming:
                if not started:
                    h.start_stream(wire.content_type)
                    started = True
                if not cancelled and not h.write_chunk(wire.delta(value)):
                    cancelled = self._cancel(h, req)
            elif kind == "done":
                self._finish(h, wire, value, streaming, started)
                return
            elif kind == "error":
                self._fail(h, wire, value, started)
                return

    def _with_session(self, h: Handler, req: Request) -> Request:
        """A conversation the node keeps (docs/HTTP.md, Sessions): the X-Edgellm-Session header
        names it, and the request's messages are then only the new turns."""
        sid = h.headers.get(SESSION_HEADER)
        if sid is None:
            return req
        if not _SESSION_RE.fullmatch(sid):
            raise HttpError(400, f"{SESSION_HEADER}: 1 to 64 of A-Z a-z 0-9 _ . : -")
        return replace(req, session=sid)

    def _cancel(self, h: Handler, req: Request) -> bool:
        h.close_connection = True
        self._counters["http_client_gone"] += 1
        self._intake.cancel(req.id, req.client)
        return True

    def _finish(self, h: Handler, wire: Wire, done: Done, streaming: bool, started: bool) -> None:
        if not streaming:
            h.send_json(200, wire.body(done))
            return
        if not started:
            h.start_stream(wire.content_type)
        h.write_chunk(wire.final(done))
        h.end_stream()

    def _fail(self, h: Handler, wire: Wire, error: tuple, started: bool) -> None:
        code, message, extra = error
        if started:
            # The status line is gone already: the error travels as the stream's last line.
            h.write_chunk(wire.stream_error(code, message))
            h.end_stream()
            return
        headers = {}
        if extra.get("retry_after_s") is not None:
            headers["Retry-After"] = retry_after(extra["retry_after_s"])
        h.send_json(STATUS.get(code, 500), wire.error_body(str(code), message), headers)


def retry_after(seconds: float) -> str:
    """The Retry-After header: whole seconds, rounded up, at least 1."""
    return str(max(1, round(seconds + 0.49)))


def _ollama_error(code: str, message: str) -> dict[str, Any]:
    return {"error": message}
