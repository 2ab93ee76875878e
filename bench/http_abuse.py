"""The HTTP door under abuse: idle connections, slowloris clients and a reader that never
reads, while a normal client asks its questions (issue 18).

    python -m bench.http_abuse [--idle 1000] [--slowloris 50] [--questions 20]

Starts a broker and a daemon (thread sweep off, no rate limit) and, in this process:
- --idle connections opened and left silent (re-opened when the server closes them);
- --slowloris clients that send a request line and then one header byte every second, for ever
  (re-connecting when cut off);
- one stream reader that asks for a long streamed reply and never reads it;
and meanwhile a normal client (the openai SDK, default retries) asks --questions questions,
one after the other. Reports: questions answered and their latency, the daemon's RSS and thread
count (median and peak, sampled every 0.5 s), and what the server did (its log's connection
counters are not exposed: the clients' view, connections closed by the server, is counted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import socket
import statistics
import threading
import time
from typing import Any

import openai
import psutil

from bench.common import machine, serving

QUESTION = [{"role": "user", "content": "Name a colour."}]


class Crowd:
    """Idle and slowloris sockets, kept at their number until stop."""

    def __init__(self, port: int, idle: int, slowloris: int) -> None:
        self.port, self.stop = port, threading.Event()
        self.closed_by_server = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._idle, daemon=True) for _ in range(8)]
        self._threads += [
            threading.Thread(target=self._loris, daemon=True) for _ in range(slowloris)
        ]
        self._idle_n = idle

    def start(self) -> Crowd:
        for t in self._threads:
            t.start()
        return self

    def _connect(self) -> socket.socket | None:
        with contextlib.suppress(OSError):
            return socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return None

    def _idle(self) -> None:
        """Keep idle/8 silent connections open; re-open those the server closed."""
        mine: list[socket.socket] = []
        share = self._idle_n // 8
        while not self.stop.is_set():
            alive = []
            for s in mine:
                s.setblocking(False)
                try:
                    gone = s.recv(1024) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    s.close()
                    with self._lock:
                        self.closed_by_server += 1
                else:
                    alive.append(s)
            mine = alive
            while len(mine) < share and not self.stop.is_set():
                fresh = self._connect()
                if fresh is None:
                    break
                mine.append(fresh)
            self.stop.wait(0.5)
        for s in mine:
            s.close()

    def _loris(self) -> None:
        while not self.stop.is_set():
            s = self._connect()
            if s is None:
                self.stop.wait(0.5)
                continue
            try:
                s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n")
                while not self.stop.wait(1.0):
                    s.sendall(b"X")
            except OSError:
                with self._lock:
                    self.closed_by_server += 1
            finally:
                s.close()


def never_reader(port: int, model: str, stop: threading.Event) -> dict[str, Any]:
    """A streamed request whose reply is never read (a tiny receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.connect(("127.0.0.1", port))
    body = json.dumps(
        {"model": model, "messages": QUESTION, "stream": True, "max_tokens": 4000, "temperature": 1}
    ).encode()
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    stop.wait()
    s.close()
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--slowloris", type=int, default=50)
    ap.add_argument("--questions", type=int, default=20)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.idle * 2 + 512)), hard))
    settings = {
        "governor": {"thread_sweep": False},
        "policy": {"rate_limit": {"requests_per_min": None, "tokens_per_min": None}},
    }
    with serving(settings) as (_, daemon):
        proc = psutil.Process(daemon.proc.pid)  # type: ignore[union-attr]
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                with contextlib.suppress(psutil.Error):
                    samples.append((proc.memory_info().rss / 2**20, proc.num_threads()))

        base = (proc.memory_info().rss / 2**20, proc.num_threads())
        threading.Thread(target=sample, daemon=True).start()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{daemon.http_port}/v1", api_key="-")
        model = client.models.list().data[0].id
        crowd = Crowd(daemon.http_port, args.idle, args.slowloris).start()
        reader = threading.Thread(
            target=never_reader, args=(daemon.http_port, model, stop), daemon=True
        )
        reader.start()
        time.sleep(5)  # the crowd is in place
        answered, latencies, errors = 0, [], []
        for _ in range(args.questions):
            t0 = time.perf_counter()
            try:
                reply = client.chat.completions.create(
                    model=model,
                    messages=QUESTION,  # type: ignore[arg-type]
                    max_tokens=12,
                    timeout=120,  # type: ignore[arg-type]
                )
                answered += bool(reply.choices[0].message.content is not None)
                latencies.append(time.perf_counter() - t0)
            except openai.APIError as err:
                errors.append(repr(err)[:120])
        stop.set()
        crowd.stop.set()
        time.sleep(1)
        events = daemon.log_events()
    rss = [r for r, _ in samples]
    threads = [n for _, n in samples]
    result = {
        "machine": machine(),
        "idle": args.idle,
        "slowloris": args.slowloris,
        "questions": args.questions,
        "answered": answered,
        "errors": errors,
        "latency_s": {
            "median": round(statistics.median(latencies), 3) if latencies else None,
            "max": round(max(latencies), 3) if latencies else None,
        },
        "rss_mib": {
            "before": round(base[0], 1),
            "median": round(statistics.median(rss), 1),
            "peak": round(max(rss), 1),
        },
        "threads": {"before": base[1], "median": statistics.median(threads), "peak": max(threads)},
        "closed_by_server": crowd.closed_by_server,
        "never_reader_cancelled": sum(e.get("event") == "cancel" for e in events),
        "http_client_gone": sum(1 for e in events if "gone" in str(e.get("event"))),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
