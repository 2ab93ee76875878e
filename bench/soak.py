"""Soak: many short requests in a row against one daemon; does its memory stay flat?

One MQTT v5 client sends N short requests ("Say hi.", 4 tokens, greedy), each with a Response
Topic and Correlation Data, keeping at most --window without a terminal reply. After a warm-up
(allocator pools, caches, the first KV-cache fill), the daemon's resident memory is read every
--sample-every requests. Reports RSS at start (after the warm-up), at the end and at its highest,
the growth, requests/s, and every terminal reply by code (lost: none within --timeout-s).
Stops by itself: each request has --timeout-s, the whole run --deadline-s.
"""

from __future__ import annotations

import argparse
import time
import uuid

from bench.common import (
    Broker,
    Daemon,
    Tally,
    free_port,
    outcomes,
    report,
    rss_mib,
    run_windowed,
    workdir,
)

BODY = {"prompt": "Say hi.", "max_tokens": 4, "temperature": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=10000, help="measured requests (default 10000)")
    ap.add_argument("--warmup", type=int, default=200, help="requests before the first reading")
    ap.add_argument("--window", type=int, default=4, help="requests in flight at most")
    ap.add_argument("--sample-every", type=int, default=500, help="RSS reading every N requests")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="per-request timeout")
    ap.add_argument("--deadline-s", type=float, default=3600.0, help="the whole run at most")
    ap.add_argument("--threads", type=int, default=None, help="model.n_threads (default: cores)")
    args = ap.parse_args()

    tmp = workdir()
    broker = Broker(free_port(), tmp).start()
    settings: dict = {"limits": {"queue_size": max(8, args.window * 2)}}
    if args.threads:
        settings["model"] = {"n_threads": args.threads}
    d = Daemon(broker, tmp, settings=settings).start()
    assert d.proc is not None
    pid = d.proc.pid
    tally = Tally(broker, f"{d.prefix}/response/soak")
    request_topic = f"{d.prefix}/request"
    deadline = time.monotonic() + args.deadline_s
    run = uuid.uuid4().hex[:6]
    samples: list[dict] = []
    try:
        warm = [(request_topic, f"w{run}-{i}", BODY) for i in range(args.warmup)]
        run_windowed(tally, warm, args.window, args.timeout_s, deadline)
        start_rss = rss_mib(pid)
        samples.append({"requests": 0, "rss_mib": start_rss})

        def sample(finished: int) -> None:
            if finished % args.sample_every == 0 and d.alive():
                samples.append({"requests": finished, "rss_mib": rss_mib(pid)})

        ids = [f"s{run}-{i}" for i in range(args.requests)]
        t0 = time.monotonic()
        sent = run_windowed(
            tally,
            ((request_topic, rid, BODY) for rid in ids),
            args.window,
            args.timeout_s,
            deadline,
            after_terminal=sample,
        )
        elapsed = time.monotonic() - t0
        alive = d.alive()
        end_rss = rss_mib(pid) if alive else None
        if end_rss is not None and samples[-1]["requests"] != sent:
            samples.append({"requests": sent, "rss_mib": end_rss})
    finally:
        tally.close()
        d.stop()
        broker.stop()
    result = outcomes(tally, ids[:sent])
    peak = max(s["rss_mib"] for s in samples)
    report(
        "soak",
        {
            "requests_sent": sent,
            "requests_planned": args.requests,
            "window": args.window,
            "daemon_alive_at_end": alive,
            "stopped_by_deadline": sent < args.requests,
            "requests_per_s": round(sent / elapsed, 2) if elapsed > 0 else None,
            "rss_mib_start": start_rss,
            "rss_mib_end": end_rss,
            "rss_mib_max": peak,
            "rss_growth_pct": round((end_rss - start_rss) / start_rss * 100, 2)
            if end_rss is not None
            else None,
            "rss_samples": samples,
            "lost": result["lost"],
            "duplicated": result["duplicated"],
            "terminal_by_code": result["codes"],
            "errors_by_code": {k: v for k, v in result["codes"].items() if k != "done"},
            "stray_replies": tally.stray,
            "bad_correlation": tally.bad_correlation,
        },
    )


if __name__ == "__main__":
    main()
