"""How fast the HTTP metadata endpoints answer while a generation runs (target: p99 < 50 ms).

A daemon with the default model serves HTTP on a free loopback port. One client streams a chat
of --tokens tokens over /api/chat; meanwhile another asks /api/tags and /api/ps in turn on a
kept-alive connection. Latency is from sending a request to its whole body, in ms; only
requests made while the generation was running count.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import httpx

from bench.common import percentile, report, serving


def stream_chat(url: str, tokens: int, started: threading.Event, out: dict) -> None:
    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "options": {"num_predict": tokens, "temperature": 0.8},
    }
    t0 = time.monotonic()
    with httpx.stream("POST", f"{url}/api/chat", json=body, timeout=600) as resp:
        for line in resp.iter_lines():
            started.set()
            if line:
                last = json.loads(line)
    out.update(seconds=round(time.monotonic() - t0, 2), eval_count=last.get("eval_count"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--interval-ms", type=float, default=20.0, help="pause between probes")
    args = ap.parse_args()
    latencies: dict[str, list[float]] = {"/api/tags": [], "/api/ps": []}
    gen: dict = {}
    with serving({"limits": {"max_tokens": max(1024, args.tokens)}}) as (_, daemon):
        url = f"http://127.0.0.1:{daemon.http_port}"
        started = threading.Event()
        worker = threading.Thread(target=stream_chat, args=(url, args.tokens, started, gen))
        worker.start()
        started.wait(120)
        with httpx.Client(base_url=url, timeout=10) as probe:
            while worker.is_alive():
                for path, values in latencies.items():
                    t0 = time.perf_counter()
                    probe.get(path).raise_for_status()
                    values.append((time.perf_counter() - t0) * 1000)
                time.sleep(args.interval_ms / 1000)
        worker.join()
    result = {
        path: {
            "n": len(v),
            "p50_ms": percentile(v, 50),
            "p99_ms": percentile(v, 99),
            "max_ms": round(max(v), 3) if v else None,
        }
        for path, v in latencies.items()
    }
    report("http_api", {"generation": {"tokens": args.tokens, **gen}, "latency": result})


if __name__ == "__main__":
    main()
