"""Does the thread sweep settle on the best count, and does it delay anyone? (issue 9)

    python -m bench.sweep_starts [--starts 20] [--burst 6] [--busy-start 0]

1. The best fixed count, measured alone: a daemon per thread count (sweep off), the median
   decode tok/s of 3 greedy 128-token replies each.
2. `--starts` starts with the sweep on, each met at `online` by a burst of `--burst` short
   requests (and, with `--busy-start S`, two processes busy for the first S seconds: the
   contention that used to lock the old sweep at the wrong count). For each start: the thread
   count in effect 30 s after `online` (settled = the last sweep ended without contention, or
   30 s passed), and the TTFT of the burst's first request against a request sent once settled.
Targets: the settled count is the best fixed count in >= 19 of 20 starts, within 30 s; the first
request's TTFT within 1.5x of the later one's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
import uuid
from typing import Any

from bench.common import Broker, Daemon, Tally, free_port, report, workdir
from daemon import cpus

PROMPT = "Write a long story about a lighthouse keeper and the sea."
SETTINGS: dict[str, Any] = {"policy": {"reply_topics": ["bench/#"]}}
NAMES = ["Anna", "Bert", "Cleo", "Dara", "Emil", "Finn", "Gwen", "Hugo", "Iris", "Jude", "Kai"]


def short(i: int) -> dict[str, Any]:
    """A short streamed request whose prompt differs from the last one's (no full-prompt reuse:
    the first request and the later one pay for the same amount of new prompt)."""
    name = NAMES[i % len(NAMES)]
    return {"prompt": f"Say hello to {name}.", "max_tokens": 16, "temperature": 0, "stream": True}


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def best_fixed(broker: Broker, counts: list[int]) -> dict[int, float]:
    speeds = {}
    for n in counts:
        settings = {**SETTINGS, "model": {"n_threads": n}, "governor": {"thread_sweep": False}}
        d = Daemon(broker, workdir(), settings=settings).start()
        tally = Tally(broker, f"bench/sweep/{uuid.uuid4().hex[:6]}")
        try:
            got = []
            for _ in range(4):
                rid = uuid.uuid4().hex[:12]
                body = {"prompt": PROMPT, "max_tokens": 128, "temperature": 0}
                tally.send(f"{d.prefix}/request", rid, body)
                tally.wait_all([rid], 120)
                got.append(tally.terminal[rid][0]["timings"]["tokens_per_s"])
            speeds[n] = round(statistics.median(got[1:]), 1)
        finally:
            tally.close()
            d.stop()
    return speeds


def _sweeps(d: Daemon) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") == "thread_sweep"]


def one_start(broker: Broker, burst: int, busy_s: float) -> dict[str, Any]:
    busy = [
        multiprocessing.Process(target=_spin, args=(busy_s,)) for _ in range(2 if busy_s else 0)
    ]
    d = Daemon(broker, workdir(), settings=SETTINGS)
    tally = Tally(broker, f"bench/sweep/{uuid.uuid4().hex[:6]}")
    try:
        d.start(wait_online=False)
        for p in busy:
            p.start()
        d.wait_status("online")
        online = time.monotonic()
        rids = [uuid.uuid4().hex[:12] for _ in range(burst)]
        for i, rid in enumerate(rids):
            tally.send(f"{d.prefix}/request", rid, short(i))
        tally.wait_all(rids, 60)
        first_ttft = (tally.first_at[rids[0]] - tally.sent_at[rids[0]]) * 1000
        settled_at = None
        while time.monotonic() - online < 30:
            sweeps = _sweeps(d)
            if sweeps and sweeps[-1].get("contended") == 0:
                settled_at = time.monotonic() - online
                break
            time.sleep(0.2)
        sweeps = _sweeps(d)
        rid = uuid.uuid4().hex[:12]
        tally.send(f"{d.prefix}/request", rid, short(burst))
        tally.wait_all([rid], 60)
        later_ttft = (tally.first_at[rid] - tally.sent_at[rid]) * 1000
        return {
            "threads": sweeps[-1]["best"] if sweeps else None,
            "sweeps": len(sweeps),
            "settled_s": round(settled_at, 1) if settled_at is not None else None,
            "first_ttft_ms": round(first_ttft, 1),
            "later_ttft_ms": round(later_ttft, 1),
            "last_sweep": sweeps[-1]["tokens_per_s"] if sweeps else None,
        }
    finally:
        for p in busy:
            p.join()
        tally.close()
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--burst", type=int, default=6)
    ap.add_argument("--busy-start", type=float, default=0.0)
    args = ap.parse_args()
    broker = Broker(free_port(), workdir()).start()
    try:
        fixed = best_fixed(broker, list(range(1, cpus.usable() + 1)))
        top = max(fixed.values())
        best = min(n for n, v in fixed.items() if v >= 0.97 * top)
        starts = [one_start(broker, args.burst, args.busy_start) for _ in range(args.starts)]
    finally:
        broker.stop()
    ratios = [s["first_ttft_ms"] / s["later_ttft_ms"] for s in starts]
    report(
        "sweep_starts",
        {
            "fixed_tokens_per_s": fixed,
            "best_fixed": best,
            "busy_start_s": args.busy_start,
            "starts": len(starts),
            "settled_on_best": sum(s["threads"] == best for s in starts),
            "settled_within_30s": sum(s["settled_s"] is not None for s in starts),
            "first_vs_later_ttft_median": round(statistics.median(ratios), 2),
            "first_vs_later_ttft_max": round(max(ratios), 2),
            "each": starts,
        },
    )


if __name__ == "__main__":
    main()
