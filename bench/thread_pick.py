"""Tokens/s at the thread count the governor picks vs. the best fixed thread count (target
0.95x). Each configuration runs in its own daemon; decode speed is the daemon's own
timings.tokens_per_s for a 200-token greedy reply, median of --runs."""

from __future__ import annotations

import argparse
import json
import statistics
import uuid

from bench.common import Broker, Client, Daemon, free_port, report, workdir
from daemon import cpus

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


def measure(broker: Broker, tmp, settings: dict, runs: int) -> tuple[float, int]:
    d = Daemon(broker, tmp, settings=settings).start()
    client = Client(broker)
    try:
        status = d.wait_status("online", 10)
        out = []
        for _ in range(runs + 1):
            topic = f"{d.prefix}/response/bench/{uuid.uuid4().hex}"
            client.subscribe(topic)
            client.publish(
                f"{d.prefix}/request",
                json.dumps({"prompt": PROMPT, "max_tokens": 200, "temperature": 0, "seed": 1}),
                response_topic=topic,
            )
            out.append(client.until_terminal(topic, 120)[-1].body["timings"]["tokens_per_s"])
        return statistics.median(out[1:]), status["threads"]
    finally:
        client.close()
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = workdir()
    broker = Broker(free_port(), tmp).start()
    try:
        fixed = {}
        for n in range(1, cpus.usable() + 1):
            fixed[n], _ = measure(
                broker, tmp, {"model": {"n_threads": n}, "governor": {"enabled": False}}, args.runs
            )
        picked, threads = measure(broker, tmp, {}, args.runs)
    finally:
        broker.stop()
    best = max(fixed.values())
    report(
        "thread_pick_tokens_per_s",
        {
            "fixed": {str(k): round(v, 1) for k, v in fixed.items()},
            "governor_threads": threads,
            "governor_tokens_per_s": round(picked, 1),
            "ratio_to_best_fixed": round(picked / best, 3),
            "target_ratio": 0.95,
        },
    )


if __name__ == "__main__":
    main()
