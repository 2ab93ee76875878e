"""Mixed load: does every request get exactly one terminal reply?

--clients threads, each with its own MQTT v5 client and its own request topic
(<prefix>/<node>/request/mix<n>), send --requests in all between them, each keeping at most
--window without a terminal reply. The mix (seeded, so a run can be repeated): non-streamed,
token-streamed and sentence-streamed replies; max_tokens 8-32; --background of them with
"priority": "background"; --cancel of them cancelled mid-way by a message to the client's own
<prefix>/<node>/cancel/mix<n> (a client cancels only its own requests), a random 0-300 ms after
the request was sent (so some are cancelled while waiting, some while running).

Per request, terminal replies (done or error, `busy` included) must be exactly 1: reports lost
(none within --timeout-s) and duplicated (more than one, within a --quiet-s window after the
end), the histogram of codes, the busy rate, and p50/p99 of the done replies' queue_ms, per
priority.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import uuid
from typing import Any

from bench.common import (
    Broker,
    Daemon,
    Tally,
    outcomes,
    percentile,
    report,
    run_windowed,
    serving,
    settle,
    threads_arg,
)

STREAMS: list[Any] = [False, True, "sentences"]
PROMPTS = ["Tell me about the sea.", "Name three fruits.", "Why do cats purr?", "Say hi."]


def plan(n: int, seed: int, cancel: float, background: float) -> list[dict[str, Any]]:
    """The whole mix, decided up front: one entry per request."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(
            {
                "body": {
                    "prompt": rng.choice(PROMPTS),
                    "max_tokens": rng.randint(8, 32),
                    "stream": rng.choice(STREAMS),
                    "priority": "background" if rng.random() < background else "interactive",
                },
                "cancel_after_s": rng.uniform(0, 0.3) if rng.random() < cancel else None,
            }
        )
    return out


class Clients:
    """--clients MQTT v5 clients, each on its own request topic, cancelling its own requests."""

    def __init__(self, broker: Broker, d: Daemon, run: str, args: argparse.Namespace):
        self.d, self.run, self.args = d, run, args
        n = args.clients
        self.tallies = [Tally(broker, f"{d.prefix}/response/mix/{run}/c{i}") for i in range(n)]
        self.ids: list[list[str]] = [[] for _ in range(n)]
        self.deadline = time.monotonic() + args.deadline_s
        self.timers: list[threading.Timer] = []
        self.timers_lock = threading.Lock()

    def client(self, n: int, share: list[dict[str, Any]]) -> None:
        tally, prefix = self.tallies[n], self.d.prefix
        cancel_at: dict[str, float | None] = {}

        def items():
            for i, entry in enumerate(share):
                rid = f"{self.run}-c{n}-{i}"
                self.ids[n].append(rid)
                cancel_at[rid] = entry["cancel_after_s"]
                yield f"{prefix}/request/mix{n}", rid, entry["body"]

        def after_send(rid: str) -> None:
            delay = cancel_at[rid]
            if delay is not None:
                timer = threading.Timer(delay, tally.cancel, (f"{prefix}/cancel/mix{n}", rid))
                timer.daemon = True
                with self.timers_lock:
                    self.timers.append(timer)
                timer.start()

        a = self.args
        run_windowed(tally, items(), a.window, a.timeout_s, self.deadline, after_send=after_send)

    def drive(self, shares: list[list[dict[str, Any]]]) -> float:
        """Every client's share sent and answered (or timed out), then a quiet window in which
        a second terminal reply would show; the seconds the sending took."""
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=self.client, args=(n, share), name=f"mix{n}")
            for n, share in enumerate(shares)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        for tally, rids in zip(self.tallies, self.ids, strict=True):
            wait = min(self.args.timeout_s, self.deadline - time.monotonic())
            tally.wait_all(rids, max(0.0, wait))
        time.sleep(self.args.quiet_s)
        return elapsed

    def close(self) -> None:
        with self.timers_lock:
            for timer in self.timers:
                timer.cancel()
        for tally in self.tallies:
            tally.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=1000, help="requests in all (default 1000)")
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--window", type=int, default=3, help="in flight per client at most")
    ap.add_argument("--queue-size", type=int, default=16, help="the daemon's limits.queue_size")
    ap.add_argument("--cancel", type=float, default=0.1, help="share of requests cancelled")
    ap.add_argument("--background", type=float, default=0.3, help="share sent as background")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout-s", type=float, default=120.0, help="per-request timeout")
    ap.add_argument("--deadline-s", type=float, default=3600.0, help="the whole run at most")
    ap.add_argument("--quiet-s", type=float, default=3.0, help="wait for duplicates at the end")
    threads_arg(ap)
    args = ap.parse_args()

    settings: dict[str, Any] = {"limits": {"queue_size": args.queue_size}}
    run = uuid.uuid4().hex[:6]
    mix = plan(args.requests, args.seed, args.cancel, args.background)
    shares = [mix[n :: args.clients] for n in range(args.clients)]
    with serving(settings, args.threads) as (broker, d):
        swept = settle(d)
        clients = Clients(broker, d, run, args)
        try:
            elapsed = clients.drive(shares)
            alive = d.alive()
        finally:
            clients.close()
    tallies, ids = clients.tallies, clients.ids

    # Only what was published counts (the deadline may stop a client between two requests).
    ids = [
        [r for r in rids if r in tally.sent_at] for tally, rids in zip(tallies, ids, strict=True)
    ]
    lost = duplicated = 0
    codes: dict[str, int] = {}
    messages: dict[str, str | None] = {}  # one example message per error code
    queue_ms: dict[str, list[float]] = {"interactive": [], "background": []}
    entries = {f"{run}-c{n}-{i}": e for n in range(args.clients) for i, e in enumerate(shares[n])}
    for tally, rids in zip(tallies, ids, strict=True):
        result = outcomes(tally, rids)
        lost += result["lost"]
        duplicated += result["duplicated"]
        for code, count in result["codes"].items():
            codes[code] = codes.get(code, 0) + count
        for rid in rids:
            for reply in tally.terminal.get(rid, [])[:1]:
                if reply["type"] == "error":
                    messages.setdefault(reply["code"], reply.get("message"))
                if reply["type"] == "done":
                    queue_ms[entries[rid]["body"]["priority"]].append(reply["timings"]["queue_ms"])
    sent = sum(len(r) for r in ids)
    all_queue = queue_ms["interactive"] + queue_ms["background"]
    report(
        "mixed_load",
        {
            "requests_sent": sent,
            "clients": args.clients,
            "window_per_client": args.window,
            "queue_size": args.queue_size,
            "seed": args.seed,
            "daemon_alive_at_end": alive,
            "start_up_sweep_done_before": swept,
            "seconds": round(elapsed, 1),
            "requests_per_s": round(sent / elapsed, 2) if elapsed > 0 else None,
            "lost": lost,
            "duplicated": duplicated,
            "exactly_one_terminal": lost == 0 and duplicated == 0,
            "terminal_by_code": dict(sorted(codes.items(), key=lambda kv: -kv[1])),
            "busy_rate": round(codes.get("busy", 0) / sent, 4) if sent else None,
            "error_examples": messages,
            "cancels_sent": sum(1 for e in entries.values() if e["cancel_after_s"] is not None),
            "queue_ms": {
                "p50": percentile(all_queue, 50),
                "p99": percentile(all_queue, 99),
                "interactive": {
                    "n": len(queue_ms["interactive"]),
                    "p50": percentile(queue_ms["interactive"], 50),
                    "p99": percentile(queue_ms["interactive"], 99),
                },
                "background": {
                    "n": len(queue_ms["background"]),
                    "p50": percentile(queue_ms["background"], 50),
                    "p99": percentile(queue_ms["background"], 99),
                },
            },
            "stray_replies": sum(t.stray for t in tallies),
            "bad_correlation": sum(t.bad_correlation for t in tallies),
        },
    )


if __name__ == "__main__":
    main()
