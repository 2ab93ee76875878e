"""How fast a hot reading takes effect: during a long generation, and between requests.

A daemon replays a trace that turns hot (84 °C on a generic board: soft 85, acts at 83) a few
seconds after start. The latency is read from the daemon's own log: from `governor_decision`
(the tick that took the hot reading) to `threads_changed` (the engine running on fewer
threads). The sensor interval (monitor.interval_s, 1 s by default) adds up to one interval
before a new temperature is read at all; it is reported beside the figure.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import datetime

from bench.common import Broker, Client, Daemon, free_port, report, workdir

HEADER = "t,cpu_temp_c,throttled,mem_total,mem_available,swap_total,swap_used\n"


def _ts(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def one(broker: Broker, tmp, during_generation: bool, interval_s: float) -> float:
    trace = tmp / f"hot-{uuid.uuid4().hex[:6]}.csv"
    gb = 4 * 2**30
    trace.write_text(
        HEADER + f"0,60,0x0,{2 * gb},{gb},0,0\n6,84,0x0,{2 * gb},{gb},0,0\n"
        f"600,84,0x0,{2 * gb},{gb},0,0\n"
    )
    d = Daemon(
        broker,
        tmp,
        settings={
            "monitor": {"source": "replay", "trace": str(trace), "interval_s": interval_s},
            # Two threads to step down from, whatever a noisy start-up sweep would measure.
            "governor": {"thread_sweep": False},
        },
    ).start()
    client = Client(broker)
    try:
        if during_generation:
            topic = f"{d.prefix}/response/bench/{uuid.uuid4().hex}"
            client.subscribe(topic)
            client.publish(
                f"{d.prefix}/request",
                json.dumps(
                    {
                        "prompt": "Write a very long story about the sea.",
                        "max_tokens": 1000,
                        "temperature": 0.8,
                        "seed": 1,
                        "stream": True,
                    }
                ),
                response_topic=topic,
            )
            client.next(topic, 60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = d.log_events()
            decided = [e for e in events if e.get("event") == "governor_decision"]
            applied = [e for e in events if e.get("event") == "threads_changed"]
            if decided and applied:
                busy = any(e.get("event") == "request" for e in events)
                assert busy is False or not during_generation, "generation ended too soon"
                return (_ts(applied[0]) - _ts(decided[0])) * 1000
            time.sleep(0.1)
        raise TimeoutError(d.log())
    finally:
        client.close()
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--interval", type=float, default=1.0, help="monitor.interval_s")
    args = ap.parse_args()
    tmp = workdir()
    broker = Broker(free_port(), tmp).start()
    try:
        during = [one(broker, tmp, True, args.interval) for _ in range(args.runs)]
        idle = [one(broker, tmp, False, args.interval) for _ in range(args.runs)]
    finally:
        broker.stop()
    report(
        "governor_reaction_ms",
        {
            "sensor_interval_s": args.interval,
            "decision_to_applied_during_generation_ms": [round(x, 1) for x in during],
            "decision_to_applied_idle_ms": [round(x, 1) for x in idle],
            "target": "within 1 s during a generation; before the next request",
        },
    )


if __name__ == "__main__":
    main()
