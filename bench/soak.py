"""Soak: many short requests in a row against one daemon; does its memory stay flat?

One MQTT v5 client sends N short requests ("Say hi.", 4 tokens, greedy), each with a Response
Topic and Correlation Data, keeping at most --window without a terminal reply. After a warm-up
(allocator pools, caches, the first KV-cache fill), the daemon's resident memory is read every
--sample-every requests. Reports RSS at start (after the warm-up), at the end and at its highest,
the growth, requests/s, and every terminal reply by code (lost: none within --timeout-s).
Stops by itself: each request has --timeout-s, the whole run --deadline-s.

--mix makes it the load a home sees, in every ten MQTT requests: six short ones, a session turn
(five sessions kept by the node, their KV states saved and restored), a JSON-schema grammar, a
Home Assistant call (its system prompt and 26 tools, bench/ha_fixture.py) and a long request
cancelled as soon as it is sent; and beside them an HTTP client (the openai SDK) sending HA's
first call every --http-every-s. Reports the HTTP statuses too.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections import Counter
from typing import Any

from bench.common import (
    Daemon,
    Tally,
    outcomes,
    report,
    rss_mib,
    run_windowed,
    serving,
    threads_arg,
)

BODY = {"prompt": "Say hi.", "max_tokens": 4, "temperature": 0}
SCHEMA = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}


def mixed(i: int) -> tuple[dict[str, Any], bool]:
    """The i-th request of --mix: its body, and whether it is cancelled at once."""
    from bench import ha_fixture

    kind = i % 10
    if kind == 6:
        return {"session": f"soak{i % 50 // 10}", "prompt": "And then?", "max_tokens": 8}, False
    if kind == 7:
        return {"prompt": "A colour as JSON.", "json_schema": SCHEMA, "max_tokens": 24}, False
    if kind == 8:
        call = ha_fixture.openai_calls(0, streaming=False)[0].kwargs
        body = {"messages": call["messages"], "tools": call["tools"], "max_tokens": 16}
        return body, False
    if kind == 9:
        return {"prompt": "Write a long story about the sea.", "max_tokens": 400}, True
    return BODY, False


def http_client(port: int, every_s: float, stop: threading.Event, codes: Counter) -> None:
    """HA's first call over the OpenAI API, every every_s, until stop."""
    import openai

    from bench import ha_fixture

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
    call = dict(ha_fixture.openai_calls(1, streaming=False)[0].kwargs, max_tokens=16)
    while not stop.wait(every_s):
        try:
            client.chat.completions.create(**call, timeout=120)
            codes["200"] += 1
        except openai.APIStatusError as err:
            codes[str(err.status_code)] += 1
        except openai.APIError as err:
            codes[type(err).__name__] += 1


class Run:
    """One soak: its requests (plain or --mix), their cancels, and the RSS readings."""

    def __init__(self, d: Daemon, tally: Tally, args: argparse.Namespace):
        assert d.proc is not None
        self.d, self.tally, self.args, self.pid = d, tally, args, d.proc.pid
        self.tag = uuid.uuid4().hex[:6]
        self.deadline = time.monotonic() + args.deadline_s
        self.to_cancel: set[str] = set()
        self.samples: list[dict[str, Any]] = []

    def request(self, rid: str, i: int) -> tuple[str, str, dict[str, Any]]:
        body, cancel = mixed(i) if self.args.mix else (BODY, False)
        if cancel:
            self.to_cancel.add(rid)
        return f"{self.d.prefix}/request", rid, body

    def after_send(self, rid: str) -> None:
        if rid in self.to_cancel:
            self.tally.cancel(f"{self.d.prefix}/cancel", rid)

    def sample(self, finished: int) -> None:
        if finished % self.args.sample_every == 0 and self.d.alive():
            self.samples.append({"requests": finished, "rss_mib": rss_mib(self.pid)})

    def warm_up(self) -> None:
        """Allocator pools, caches, the first KV-cache fill; then the first reading."""
        warm = [self.request(f"w{self.tag}-{i}", i) for i in range(self.args.warmup)]
        a = self.args
        run_windowed(self.tally, warm, a.window, a.timeout_s, self.deadline, self.after_send)
        self.samples.append({"requests": 0, "rss_mib": rss_mib(self.pid)})

    def measure(self) -> tuple[list[str], int, float, bool, list[dict[str, Any]]]:
        """The measured requests: their ids, how many were sent, seconds, alive at the end."""
        a = self.args
        ids = [f"s{self.tag}-{i}" for i in range(a.requests)]
        t0 = time.monotonic()
        sent = run_windowed(
            self.tally,
            (self.request(rid, i) for i, rid in enumerate(ids)),
            a.window,
            a.timeout_s,
            self.deadline,
            after_send=self.after_send,
            after_terminal=self.sample,
        )
        elapsed = time.monotonic() - t0
        alive = self.d.alive()
        if alive and self.samples[-1]["requests"] != sent:
            self.samples.append({"requests": sent, "rss_mib": rss_mib(self.pid)})
        return ids, sent, elapsed, alive, self.samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=10000, help="measured requests (default 10000)")
    ap.add_argument("--warmup", type=int, default=200, help="requests before the first reading")
    ap.add_argument("--window", type=int, default=4, help="requests in flight at most")
    ap.add_argument("--sample-every", type=int, default=500, help="RSS reading every N requests")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="per-request timeout")
    ap.add_argument("--deadline-s", type=float, default=3600.0, help="the whole run at most")
    threads_arg(ap)
    ap.add_argument(
        "--mix", action="store_true", help="sessions, grammars, HA tools, cancels, HTTP"
    )
    ap.add_argument("--http-every-s", type=float, default=2.0, help="--mix: HTTP request pace")
    ap.add_argument("--dedupe-window-s", type=float, default=None, help="limits.dedupe_window_s")
    args = ap.parse_args()

    settings: dict = {
        "limits": {"queue_size": max(8, args.window * 2)}
        | ({} if args.dedupe_window_s is None else {"dedupe_window_s": args.dedupe_window_s}),
        "policy": {"rate_limit": {"requests_per_min": None, "tokens_per_min": None}},
    }
    stop_http, http_codes = threading.Event(), Counter[str]()
    with serving(settings, args.threads) as (broker, d):
        tally = Tally(broker, f"{d.prefix}/response/soak")
        try:
            if args.mix:
                threading.Thread(
                    target=http_client,
                    args=(d.http_port, args.http_every_s, stop_http, http_codes),
                ).start()
            run = Run(d, tally, args)
            run.warm_up()
            ids, sent, elapsed, alive, samples = run.measure()
        finally:
            stop_http.set()
            tally.close()
    result = outcomes(tally, ids[:sent])
    start_rss, peak = samples[0]["rss_mib"], max(s["rss_mib"] for s in samples)
    end_rss = samples[-1]["rss_mib"] if alive else None
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
            "http_statuses": dict(http_codes),
            "cancelled_at_once": len(run.to_cancel),
            "stray_replies": tally.stray,
            "bad_correlation": tally.bad_correlation,
        },
    )


if __name__ == "__main__":
    main()
