"""The HTTP server's bounds against abusive clients, on real sockets (daemon/frontends/
http_server.py): a connection cap that makes room by evicting the longest-idle connection,
a deadline for a request's headers however slowly they trickle, 408 for a body that never
arrives, 503 with Retry-After when every connection is busy. The route is a stub: the bounds
are the server's, not the API's (tests/test_http_api.py has the real door)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from daemon.frontends.http_common import HttpError
from daemon.frontends.http_server import Bounds, Handler, Server
from tests.helpers import poll

# Short deadlines for the tests of deadlines; the cap's tests wait long enough that no deadline
# passes while a slow machine opens their connections.
BOUNDS = Bounds(max_connections=4, wait_timeout_s=1.0, body_timeout_s=1.0)
CAP = Bounds(max_connections=4, wait_timeout_s=60.0, body_timeout_s=60.0)


class Stub:
    """A route: GET answers at once, POST echoes its body; /hold waits for `release`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.stream_ended = threading.Event()
        self.holding: list[int] = []  # one entry per handler inside /hold (append is atomic)

    def __call__(self, h: Handler, method: str) -> None:
        try:
            if h.path_only == "/stream":  # endless, until a write fails
                h.start_stream("text/event-stream")
                while h.write_chunk(b"x" * 65536):
                    pass
                self.stream_ended.set()
                return
            if h.path_only == "/hold":
                self.holding.append(1)
                self.release.wait(30)
            body = h.read_json(1024) if method == "POST" else {"ok": True}
            h.send_json(200, body)
        except HttpError as err:
            h.close_connection = True
            h.send_json(err.status, {"error": err.message}, err.headers)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Server, Stub]]:
    srv = Server(("127.0.0.1", 0), getattr(request, "param", BOUNDS))
    stub = Stub()
    srv.route = stub
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv, stub
    stub.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def connect(srv: Server) -> socket.socket:
    return socket.create_connection(srv.server_address[:2], timeout=10)


def request(sock: socket.socket, raw: bytes) -> tuple[int, bytes]:
    """Send raw, read one response: (status, head and body as far as they came)."""
    sock.sendall(raw)
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(1024):
            pass
        return True  # EOF
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("server", [CAP], indirect=True)
def test_at_the_cap_a_new_connection_takes_the_place_of_the_longest_idle(server):
    srv, _ = server
    idle = [connect(srv) for _ in range(CAP.max_connections)]
    poll(lambda: srv.connections == CAP.max_connections, 10, "every idle connection counted")
    status, _ = request(connect(srv), GET)
    assert status == 200
    assert closed_by_server(idle[0], 5)  # the oldest made room
    assert srv.evicted >= 1 and srv.refused == 0
    assert srv.connections <= CAP.max_connections + 1


@pytest.mark.parametrize("server", [CAP], indirect=True)
def test_when_every_connection_is_busy_a_new_one_gets_503_with_retry_after(server):
    srv, stub = server
    held = [connect(srv) for _ in range(CAP.max_connections)]
    for sock in held:
        sock.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    # Every handler inside the route (marked busy), not waiting for a request.
    poll(lambda: len(stub.holding) == CAP.max_connections, 10, "every connection busy")
    status, raw = request(connect(srv), GET)
    assert status == 503 and b"Retry-After: 5" in raw and srv.refused == 1
    stub.release.set()
    assert request(held[0], b"")[0] == 200  # the held ones are answered in the end


def test_headers_that_trickle_are_cut_off_at_the_deadline(server):
    srv, _ = server
    sock = connect(srv)
    sock.sendall(b"GET / HTTP/1.1\r\n")
    started = time.monotonic()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(200):  # a byte every 0.2 s: each read is quick, the whole is not
            sock.sendall(b"X")
            time.sleep(0.2)
            if closed_by_server(sock, 0.01):
                raise BrokenPipeError
    assert time.monotonic() - started < BOUNDS.wait_timeout_s + 10


def test_an_idle_keep_alive_connection_is_closed_after_the_wait(server):
    srv, _ = server
    sock = connect(srv)
    assert request(sock, GET)[0] == 200
    assert closed_by_server(sock, BOUNDS.wait_timeout_s + 10)
    poll(lambda: srv.connections == 0, 5, "the connection released")


def test_a_body_shorter_than_its_content_length_gets_408(server):
    srv, _ = server
    sock = connect(srv)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    started = time.monotonic()
    status, raw = request(sock, head + b'{"a": 1')
    assert status == 408 and b"did not arrive" in raw
    assert time.monotonic() - started < BOUNDS.body_timeout_s + 10


def test_a_whole_body_is_read_and_malformed_http_gets_400(server):
    srv, _ = server
    body = json.dumps({"a": 1}).encode()
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    status, raw = request(connect(srv), head + body)
    assert status == 200 and json.loads(raw.split(b"\r\n\r\n", 1)[1]) == {"a": 1}
    for bad in (b"NONSENSE\r\n\r\n", b"GET / HTTP/1.1 extra\r\n\r\n", b"GET / HTTP/7.0\r\n\r\n"):
        assert request(connect(srv), bad)[0] in (400, 505)


def test_a_client_that_never_reads_its_stream_is_cut_off(server):
    # The handler's writes block once the buffers fill; each may block body_timeout_s at most,
    # then write_chunk says the client is gone (the API door cancels the generation on that).
    srv, stub = server
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(srv.server_address[:2])
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert stub.stream_ended.wait(BOUNDS.body_timeout_s + 20)
    sock.close()
