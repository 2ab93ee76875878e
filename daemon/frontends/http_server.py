"""The HTTP plumbing: the stdlib ThreadingHTTPServer, one thread per connection, and the socket
work a handler needs (read a bounded JSON body, send JSON, stream chunks, see a client leave).

Why the standard library and not aiohttp: no new dependency on the Pi, threads like the rest of
the core (see STYLE.md), and the engine serialises generations anyway, so a thread per
connection is cheap. Streaming is HTTP/1.1 chunked encoding; a client that left is seen when a
write fails or when its socket reads EOF while the handler waits (Handler.client_gone).

Bounded for a LAN that is not always friendly (docs/SECURITY.md):
- at most `max_connections` connections (and handler threads): at the cap a new connection
  takes the place of the one that has waited longest for its next request (an idle keep-alive
  or a slowloris), or, when every one is busy, is answered 503 with Retry-After and closed;
- a connection waits at most `wait_timeout_s` for a request's line and headers (idle keep-alive
  included): a reaper thread closes it after that, however slowly the bytes trickle in;
- a body must arrive within `body_timeout_s` (408 otherwise), and every socket read or write
  takes at most that long: a client that stops reading its stream is cut off, and its
  generation cancelled (the slot is freed).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from daemon.frontends.http_common import HttpError, encode

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Bounds:
    max_connections: int = 64
    wait_timeout_s: float = 15.0
    body_timeout_s: float = 30.0


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 5\r\nConnection: close\r\nContent-Length: 46\r\n\r\n"
    b'{"error": "too many connections; retry later"}'
)


class Server(ThreadingHTTPServer):
    """Handler threads are daemons: a stuck client never holds up the daemon's exit. Counts its
    connections and when each began waiting for its next request (None: being handled)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    # Set by the front door: called as route(handler, method) on each request's thread.
    route: Callable[[Handler, str], None]
    node_id = ""  # named in every response's X-Edgellm-Node header

    def __init__(self, address: tuple[str, int], bounds: Bounds = Bounds()) -> None:
        self.bounds = bounds
        self._waiting: dict[socket.socket, float | None] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.refused = 0  # connections answered 503 at the cap
        self.evicted = 0  # waiting connections closed for a new one, or after wait_timeout_s
        super().__init__(address, Handler)  # binds: OSError when the port is taken
        threading.Thread(target=self._reap, name="http-reaper", daemon=True).start()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._waiting)

    def mark(self, conn: socket.socket, waiting: bool) -> None:
        """A connection starts waiting for its next request (kept: since it was accepted, or
        since its last response), or is being handled."""
        with self._lock:
            if conn not in self._waiting:
                return
            if not waiting:
                self._waiting[conn] = None
            elif self._waiting[conn] is None:
                self._waiting[conn] = time.monotonic()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            victim = None
            if len(self._waiting) >= self.bounds.max_connections:
                idle = [(t, c) for c, t in self._waiting.items() if t is not None]
                victim = min(idle, key=lambda e: e[0])[1] if idle else None
                if victim is None:
                    self.refused += 1
                    _refuse(request)
                    return
                self._waiting[victim] = None
                self.evicted += 1
            self._waiting[request] = time.monotonic()
        if victim is not None:
            _drop(victim)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._waiting.pop(request, None)
        super().shutdown_request(request)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def _reap(self) -> None:
        """Close connections that waited too long for a request (idle or trickling)."""
        while not self._closed.wait(1.0):
            limit = time.monotonic() - self.bounds.wait_timeout_s
            with self._lock:
                late = [c for c, t in self._waiting.items() if t is not None and t < limit]
                for conn in late:
                    self._waiting[conn] = None
                self.evicted += len(late)
            for conn in late:
                _drop(conn)


def _refuse(sock: socket.socket) -> None:
    """503 at the cap, best effort and never blocking the accept loop, then close."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(_BUSY)
    with contextlib.suppress(OSError):
        sock.close()


def _drop(sock: socket.socket) -> None:
    """End a connection another thread is reading: its read returns EOF and its handler ends."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    """One connection; the front door's route() does the protocol work."""

    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streaming
    # A request line too malformed to name a version still gets a status line (the stdlib's
    # default, HTTP/0.9, answers with a bare body that no client can read as an error).
    default_request_version = "HTTP/1.1"
    server_version = "edgellm"
    error_content_type = "application/json"
    error_message_format = '{"error": "%(message)s"}'

    def setup(self) -> None:
        super().setup()
        # Every read and write of the socket takes at most this long (a client that stops
        # reading its stream is cut off); the wait for a request is the reaper's.
        self.connection.settimeout(self.server.bounds.body_timeout_s)
        # Each streamed chunk is a small write: without TCP_NODELAY Nagle holds it back.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def end_headers(self) -> None:
        if self.server.node_id:
            self.send_header("X-Edgellm-Node", self.server.node_id)
        super().end_headers()

    def handle_one_request(self) -> None:
        self.server.mark(self.connection, waiting=True)
        super().handle_one_request()

    def _handle(self, method: str) -> None:
        self.server.mark(self.connection, waiting=False)
        self.server.route(self, method)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

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
        raw = self._read_body(length)
        if not raw.strip():
            raise HttpError(400, "empty body: send a JSON object")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise HttpError(400, f"body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        return body

    def _read_body(self, length: int) -> bytes:
        """length bytes within body_timeout_s in all: 408 for a body that trickles or lies
        about its length (the connection is closed after the error)."""
        limit = self.server.bounds.body_timeout_s
        deadline = time.monotonic() + limit
        parts, left = [], length
        try:
            while left > 0:
                self.connection.settimeout(max(0.05, deadline - time.monotonic()))
                data = self.rfile.read1(min(left, 65536))
                if not data:
                    raise HttpError(400, f"the body ended {left} bytes short of Content-Length")
                parts.append(data)
                left -= len(data)
                if left > 0 and time.monotonic() > deadline:
                    raise TimeoutError
        except TimeoutError:
            self.close_connection = True
            raise HttpError(408, f"the body did not arrive within {limit:g} s") from None
        finally:
            self.connection.settimeout(limit)
        return b"".join(parts)

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
