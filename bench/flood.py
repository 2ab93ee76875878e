"""Flood: does one client sending far too much slow another one down?

Two MQTT v5 clients on their own request topics (the level after request/ names the client):
B ("bob") sends one short request every --interval-s; A ("alice") floods --rate requests/s.
First B alone for --duration-s (the daemon otherwise idle), then B again while A floods for
the same time. Reports A's replies by code (`rate_limited` expected for most), and B's median
and p90 latency (publish to the terminal reply, as B sees it) both ways, with the ratio
(target: at most 1.5). The rate limit comes from the flags (policy.rate_limit).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from typing import Any

from bench.common import (
    Daemon,
    Tally,
    outcomes,
    percentile,
    report,
    serving,
    settle,
    threads_arg,
)

BODY = {"prompt": "Say hi.", "max_tokens": 8, "temperature": 0}


def paced(
    tally: Tally,
    request_topic: str,
    prefix: str,
    rate: float,
    duration_s: float,
    stop: threading.Event,
) -> list[str]:
    """Send at `rate` requests/s for duration_s (on a schedule, not after each reply)."""
    ids = []
    start = time.monotonic()
    n = 0
    while not stop.is_set():
        at = start + n / rate
        if at - start >= duration_s:
            break
        if stop.wait(max(0.0, at - time.monotonic())):
            break
        rid = f"{prefix}-{n}"
        tally.send(request_topic, rid, BODY)
        ids.append(rid)
        n += 1
    return ids


def latencies(tally: Tally, ids: list[str]) -> list[float]:
    """Milliseconds from publish to the terminal reply, for those that got one."""
    with tally.cond:
        return [
            (tally.terminal_at[r] - tally.sent_at[r]) * 1000 for r in ids if r in tally.terminal_at
        ]


def phase(
    d: Daemon,
    bob: Tally,
    alice: Tally | None,
    args: argparse.Namespace,
    tag: str,
) -> dict[str, Any]:
    stop = threading.Event()
    flood_ids: list[str] = []

    def flood() -> None:
        assert alice is not None
        flood_ids.extend(
            paced(alice, f"{d.prefix}/request/alice", f"a{tag}", args.rate, args.duration_s, stop)
        )

    flooder = threading.Thread(target=flood) if alice is not None else None
    if flooder is not None:
        flooder.start()
    try:
        bob_ids = paced(
            bob,
            f"{d.prefix}/request/bob",
            f"b{tag}",
            1 / args.interval_s,
            args.duration_s,
            stop,
        )
        if flooder is not None:
            flooder.join()  # A floods the whole phase, after B's last request too
    finally:
        stop.set()
        if flooder is not None:
            flooder.join()
    bob.wait_all(bob_ids, args.timeout_s)
    if alice is not None:
        alice.wait_all(flood_ids, args.timeout_s)
    b_ms = latencies(bob, bob_ids)
    out: dict[str, Any] = {
        "bob": {
            "sent": len(bob_ids),
            **outcomes(bob, bob_ids),
            "median_ms": round(statistics.median(b_ms), 2) if b_ms else None,
            "p90_ms": percentile(b_ms, 90),
            "max_ms": round(max(b_ms), 2) if b_ms else None,
        }
    }
    if alice is not None:
        result = outcomes(alice, flood_ids)
        out["alice"] = {
            "sent": len(flood_ids),
            "rate_per_s": args.rate,
            **result,
            "rate_limited": result["codes"].get("rate_limited", 0),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=float, default=50.0, help="A's requests per second")
    ap.add_argument("--duration-s", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--interval-s", type=float, default=1.0, help="B's interval")
    ap.add_argument("--requests-per-min", type=float, default=60.0, help="policy.rate_limit")
    ap.add_argument("--burst", type=int, default=10, help="policy.rate_limit.burst")
    ap.add_argument(
        "--tokens-per-min", type=int, default=None, help="policy.rate_limit (default: none)"
    )
    ap.add_argument("--queue-size", type=int, default=8, help="limits.queue_size")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="wait for the last replies")
    threads_arg(ap)
    args = ap.parse_args()

    settings: dict[str, Any] = {
        "limits": {"queue_size": args.queue_size},
        "policy": {
            "rate_limit": {
                "requests_per_min": args.requests_per_min,
                "burst": args.burst,
                "tokens_per_min": args.tokens_per_min,
            }
        },
    }
    with serving(settings, args.threads) as (broker, d):
        run = uuid.uuid4().hex[:6]
        bob = Tally(broker, f"{d.prefix}/response/flood/{run}/bob")
        alice = Tally(broker, f"{d.prefix}/response/flood/{run}/alice")
        try:
            settle(d)
            idle = phase(d, bob, None, args, "idle")
            flooded = phase(d, bob, alice, args, "flood")
            alive = d.alive()
        finally:
            bob.close()
            alice.close()
    before, during = idle["bob"]["median_ms"], flooded["bob"]["median_ms"]
    report(
        "flood",
        {
            "rate_limit": settings["policy"]["rate_limit"],
            "duration_s": args.duration_s,
            "bob_idle": idle["bob"],
            "bob_during_flood": flooded["bob"],
            "alice": flooded["alice"],
            "bob_median_ratio": round(during / before, 3) if before and during else None,
            "target_ratio": 1.5,
            "daemon_alive_at_end": alive,
        },
    )


if __name__ == "__main__":
    main()
