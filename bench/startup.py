"""Time from spawning `edgellm serve` to the retained `online` status arriving (target: 3 s),
and what the one-time CPU probe adds (target: at most 2 s to the first start, nothing later).

Three kinds of start, interleaved in each round so that machine noise hits all alike:
`off` (model.cpu_repack: off, no probe at all), `first` (auto, a fresh state dir: the probe
runs), `later` (auto, the verdict of the `first` start is read back).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from bench.common import Broker, Client, Daemon, free_port, report, summary, workdir


def start_to_online(broker: Broker, tmp, settings: dict) -> float:
    d = Daemon(broker, tmp, settings=settings)
    client = Client(broker)
    status = f"{d.prefix}/status"
    client.subscribe(status)
    t0 = time.monotonic()
    d.start(wait_online=False)
    try:
        while client.next(status, 60).body.get("state") != "online":
            pass
        return time.monotonic() - t0
    finally:
        client.close()
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = workdir()
    broker = Broker(free_port(), tmp).start()
    times: dict[str, list[float]] = {"off": [], "first": [], "later": []}
    try:
        for _ in range(args.runs):
            times["off"].append(start_to_online(broker, tmp, {"model": {"cpu_repack": "off"}}))
            os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(dir=tmp)
            times["first"].append(start_to_online(broker, tmp, {}))
            times["later"].append(start_to_online(broker, tmp, {}))
    finally:
        broker.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    report(
        "startup_to_online_s",
        {
            **{k: summary(v) for k, v in times.items()},
            "probe_adds_first_s": round(med["first"] - med["off"], 3),
            "probe_adds_later_s": round(med["later"] - med["off"], 3),
            "targets": {"online_s": 3.0, "probe_adds_first_s": 2.0, "probe_adds_later_s": 0.0},
        },
    )


if __name__ == "__main__":
    main()
