"""The HTTP door's server: the standard library's, bounded as edgellm runs it, against waitress
(a well-kept pure-Python WSGI server: one I/O thread multiplexing every connection, a fixed pool
of worker threads). Issue 18 asks whether a library would serve a Pi better.

    pip install waitress   # bench only: edgellm does not depend on it
    python -m bench.http_servers [--seconds 5] [--clients 4] [--idle 1000] [--slowloris 50]

Each server runs in a process of its own and answers one JSON route (GET /api/version, what HA
polls) with the same body. Measured, one server after the other:
- idle RSS (after start and one request) and thread count;
- requests/s of --clients keep-alive clients (http.client, one thread each) for --seconds;
- with --idle silent connections and --slowloris trickling clients held open (bench/http_abuse's
  crowd), the server's RSS and threads, and --questions requests of a normal client (a new
  connection each): how many were answered and their latency.
The stdlib server runs with edgellm's Bounds (64 connections, 15 s to send a request); waitress
with its defaults (4 threads, 100 connections) and channel_timeout 15 s to match.
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import psutil

from bench.common import free_port, machine, report
from bench.http_abuse import Crowd
from tests.helpers import wait_port

BODY = json.dumps({"version": "0.6.2"}).encode()


def serve_stdlib(port: int) -> None:
    from daemon.frontends.http_server import Server

    def route(handler: Any, method: str) -> None:
        handler.send_json(200, {"version": "0.6.2"})

    server = Server(("127.0.0.1", port))
    server.route = route
    server.serve_forever()


def serve_waitress(port: int) -> None:
    import waitress

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]
        start_response("200 OK", headers)
        return [BODY]

    waitress.serve(app, host="127.0.0.1", port=port, channel_timeout=15, _quiet=True)


def hammer(port: int, clients: int, seconds: float) -> float:
    """Requests per second of `clients` keep-alive clients."""
    counts = [0] * clients
    end = time.monotonic() + seconds

    def one(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < end:
            conn.request("GET", "/api/version")
            conn.getresponse().read()
            counts[i] += 1
        conn.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return round(sum(counts) / seconds, 1)


def ask(port: int, questions: int) -> dict[str, Any]:
    """A normal client's requests, a new connection each, under the crowd."""
    latencies, failures = [], 0
    for _ in range(questions):
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conn.request("GET", "/api/version")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status != 200:
                failures += 1
                continue
            latencies.append(time.monotonic() - t0)
        except OSError:
            failures += 1
        time.sleep(0.5)
    return {
        "answered": len(latencies),
        "of": questions,
        "failed": failures,
        "median_s": round(statistics.median(latencies), 3) if latencies else None,
        "max_s": round(max(latencies), 3) if latencies else None,
    }


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.http_servers", "--serve", kind, str(port)]
    )
    try:
        wait_port(port)
        ps = psutil.Process(proc.pid)
        ask(port, 1)
        idle = {"rss_mib": round(ps.memory_info().rss / 2**20, 1), "threads": ps.num_threads()}
        rps = hammer(port, args.clients, args.seconds)
        crowd = Crowd(port, args.idle, args.slowloris).start()
        time.sleep(args.settle_s)
        answered = ask(port, args.questions)
        under = {"rss_mib": round(ps.memory_info().rss / 2**20, 1), "threads": ps.num_threads()}
        crowd.stop.set()
        return {
            "idle": idle,
            "requests_per_s": rps,
            "under_crowd": under,
            "normal_client_under_crowd": answered,
            "closed_by_server": crowd.closed_by_server,
        }
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of the requests/s run")
    ap.add_argument("--clients", type=int, default=4, help="keep-alive clients for requests/s")
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--slowloris", type=int, default=50)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--settle-s", type=float, default=5.0, help="crowd in place before asking")
    ap.add_argument("--runs", type=int, default=2, help="each server this many times, alternated")
    args = ap.parse_args()
    if args.serve:
        kind, port = args.serve
        {"stdlib": serve_stdlib, "waitress": serve_waitress}[kind](int(port))
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.idle * 2 + 512)), hard))
    results: dict[str, list[dict[str, Any]]] = {"stdlib": [], "waitress": []}
    for _ in range(args.runs):
        for kind in results:
            results[kind].append(measure(kind, args))
    report("http_servers", {"machine": machine(), "args": vars(args), **results})


if __name__ == "__main__":
    main()
