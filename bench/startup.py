"""Time from spawning `edgellm serve` to the retained `online` status arriving (target: 3 s)."""

from __future__ import annotations

import argparse
import time

from bench.common import Broker, Client, Daemon, free_port, report, summary, workdir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = workdir()
    broker = Broker(free_port(), tmp).start()
    times: list[float] = []
    try:
        for _ in range(args.runs):
            d = Daemon(broker, tmp)
            client = Client(broker)
            status = f"{d.prefix}/status"
            client.subscribe(status)
            t0 = time.monotonic()
            d.start(wait_online=False)
            while client.next(status, 60).body.get("state") != "online":
                pass
            times.append(time.monotonic() - t0)
            client.close()
            d.stop()
    finally:
        broker.stop()
    report("startup_to_online_s", {"runs": summary(times), "target_s": 3.0})


if __name__ == "__main__":
    main()
