"""The HTTP plumbing: the stdlib ThreadingHTTPServer, one thread per connection, and the socket
work a handler needs (read a bounded JSON body, send JSON, stream chunks, see a client leave).

Why the standard library and not aiohttp: no new dependency on the Pi, threads like the rest of
the core (see STYLE.md), and the engine serialises generations anyway, so a thread per
connection is cheap. Streaming is HTTP/1.1 chunked encoding; a client that left is seen when a
write fails or when its socket reads EOF while the handler waits (Handler.client_gone).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from daemon.frontends.http_common import HttpError, encode

log = structlog.get_logger(__name__)


class Server(ThreadingHTTPServer):
    """Handler threads are daemons: a stuck client never holds up the daemon's exit."""

    daemon_threads = True
    allow_reuse_address = True
    # Set by the front door: called as route(handler, method) on each request's thread.
    route: Callable[[Handler, str], None]


class Handler(BaseHTTPRequestHandler):
    """One connection; the front door's route() does the protocol work."""

    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streaming
    server_version = "edgellm"
    error_content_type = "application/json"
    error_message_format = '{"error": "%(message)s"}'

    def setup(self) -> None:
        super().setup()
        # Each streamed chunk is a small write: without TCP_NODELAY Nagle holds it back.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self.server.route(self, "GET")

    def do_POST(self) -> None:
        self.server.route(self, "POST")

    def do_HEAD(self) -> None:
        self.server.route(self, "HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        # The front door writes one structured line per request; no stderr access log.
        return

    @property
    def path_only(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def read_json(self, limit: int) -> Any:
        """The request body as JSON; HttpError 413 over limit, 400 when it is not JSON."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "Content-Length is not a number") from None
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise HttpError(411, "send the body with a Content-Length")
        if length > limit:
            # The body stays unread: close rather than read megabytes to keep the connection.
            self.close_connection = True
            raise HttpError(413, f"body is {length} bytes; the limit is {limit}", "too_long")
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            raise HttpError(400, "empty body: send a JSON object")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise HttpError(400, f"body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        return body

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = encode(obj)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def write_chunk(self, data: bytes) -> bool:
        """Send one chunk; False when the client has gone (the caller cancels)."""
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def end_stream(self) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def client_gone(self) -> bool:
        """Whether the client closed its end: readable with nothing to read is EOF."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True
