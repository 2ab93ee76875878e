"""A fake Hugging Face hub and its CDN on loopback: resolve URLs that redirect with the
published digest and size, ranges, dropped connections, gated repos, and a body that stalls
until a test lets it go on. Shared by the hub download tests and the HTTP pull tests."""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from daemon import models

REPO = "edgellm-tests/tiny-GGUF"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SIZE = 300_000
DROP_AFTER = 70_000  # bytes a dropping GET sends before it closes the connection
STALL_TIMEOUT_S = 120.0  # a stalled body goes on by itself after this, whatever the test did


def fake_gguf(size: int, seed: int) -> bytes:
    """GGUF magic then random bytes: enough for every check but loading."""
    return models.GGUF_MAGIC + random.Random(seed).randbytes(size - len(models.GGUF_MAGIC))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class HubFile:
    """One file of the fake hub and how its CDN behaves."""

    data: bytes
    repo: str = REPO
    revision: str = "main"
    etag: str = ""  # the published sha256; the data's own unless a test says otherwise
    drops: int = 0  # this many GETs send DROP_AFTER bytes at most, then close
    ranges: bool = True  # the CDN honours Range
    head: bool = True  # the CDN answers HEAD (else 405)
    gets: int = 0
    # Set: each GET sends stall_after bytes of its body, then the rest once the gate opens.
    gate: threading.Event | None = None
    stall_after: int = 0

    def __post_init__(self) -> None:
        self.etag = self.etag or sha256(self.data)


@dataclass(frozen=True)
class Seen:
    """One request as the fake hub saw it."""

    role: str  # "hub" (resolve URLs) or "cdn"
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    files: dict[str, HubFile] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    hub_port: int = 0
    cdn_port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    def cdn_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.cdn_port}/cdn/{name}"

    def requests(self, role: str, method: str) -> list[Seen]:
        return [s for s in self.seen if s.role == role and s.method == method]


class HubServer(ThreadingHTTPServer):
    fake: FakeHub
    role: str


class HubHandler(BaseHTTPRequestHandler):
    """The hub's resolve URLs answer with a 302 to the CDN carrying X-Linked-Etag and
    X-Linked-Size, as huggingface.co does; the CDN serves bytes and ranges. HTTP/1.0: each
    response ends by closing, which is also what a dropped connection looks like."""

    server: HubServer

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, *, head: bool) -> None:
        fake, role = self.server.fake, self.server.role
        seen = Seen(
            role,
            self.command,
            self.path,
            self.headers.get("Range"),
            self.headers.get("Authorization"),
        )
        fake.seen.append(seen)
        if role == "hub":
            self._resolve(fake, head=head)
        else:
            self._cdn(fake, head=head)

    def _resolve(self, fake: FakeHub, *, head: bool) -> None:
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
        if match is None:
            return self._send(404, head, {"X-Error-Code": "RepoNotFound"})
        repo, revision, name = match.groups()
        if repo in fake.gated:
            return self._send(401, head, {"X-Error-Code": "GatedRepo"}, b'{"error":"gated"}')
        f = fake.files.get(name)
        if f is None or (f.repo, f.revision) != (repo, revision):
            return self._send(404, head, {"X-Error-Code": "EntryNotFound"})
        self._send(
            302,
            head,
            {
                "Location": fake.cdn_url(name),
                "X-Linked-Etag": f'"{f.etag}"',
                "X-Linked-Size": str(len(f.data)),
                "X-Repo-Commit": COMMIT,
            },
        )

    def _cdn(self, fake: FakeHub, *, head: bool) -> None:
        f = fake.files.get(self.path.removeprefix("/cdn/"))
        if f is None:
            return self._send(404, head, {})
        if head:
            if not f.head:
                return self._send(405, head, {})
            return self._send(200, head, {"Accept-Ranges": "bytes"} if f.ranges else {}, f.data)
        f.gets += 1
        start, asked = 0, self.headers.get("Range")
        if asked and f.ranges:
            start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1))  # type: ignore[union-attr]
            if start >= len(f.data):
                return self._send(416, head, {"Content-Range": f"bytes */{len(f.data)}"})
        headers = {"Accept-Ranges": "bytes"} if f.ranges else {}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(f.data) - 1}/{len(f.data)}"
        body = f.data[start:]
        length = len(body)
        if f.gets <= f.drops:
            body = body[:DROP_AFTER]
        if f.gate is None:
            return self._send(206 if start else 200, head, headers, body, length)
        self._send(206 if start else 200, head, headers, body[: f.stall_after], length)
        f.gate.wait(STALL_TIMEOUT_S)
        self.wfile.write(body[f.stall_after :])

    def _send(
        self,
        code: int,
        head: bool,
        headers: dict[str, str],
        body: bytes = b"",
        length: int | None = None,
    ) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(state: FakeHub) -> Iterator[FakeHub]:
    """The hub and its CDN on two free loopback ports, stopped on the way out."""
    servers, threads = [], []
    for role in ("hub", "cdn"):
        server = HubServer(("127.0.0.1", 0), HubHandler)
        server.fake, server.role = state, role
        servers.append(server)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        threads.append(thread)
    state.hub_port, state.cdn_port = (s.server_address[1] for s in servers)
    try:
        yield state
    finally:
        for server, thread in zip(servers, threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
