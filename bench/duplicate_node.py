"""Two daemons with one node id on one broker (issue 18): how long until one stops with the
clear error, and does the other then hold its session (no reconnect storm)?

    python -m bench.duplicate_node [--watch-s 30]

For MQTT v5 and 3.1.1 in turn: start daemon A, wait for `online`, start daemon B with A's node
id, time from B's start to the first `mqtt_duplicate_node` error in either log, then count the
survivor's `mqtt_connected` lines over --watch-s seconds (before the fix: 16 in 30 s, each
daemon reconnecting every ~2 s). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from bench.common import Broker, Daemon, free_port, machine, workdir


def events(d: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") == name]


def one(broker: Broker, protocol: str, watch_s: float) -> dict[str, Any]:
    settings = {
        "mqtt": {"host": broker.host, "port": broker.port, "protocol": protocol},
        "governor": {"thread_sweep": False},
        "http": {"enabled": False},
        "wyoming": {"enabled": False},
    }
    node = f"dup{uuid.uuid4().hex[:4]}"
    tmp = workdir()
    a = Daemon(broker, tmp, node_id=node, settings=settings).start()
    b = Daemon(broker, tmp / "b", node_id=node, settings=settings)
    b.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    b.start(wait_online=False)
    loser = None
    while time.monotonic() - t0 < 120 and loser is None:
        loser = next((d for d in (a, b) if events(d, "mqtt_duplicate_node")), None)
        time.sleep(0.05)
    to_error = time.monotonic() - t0
    winner = b if loser is a else a
    before = len(events(winner, "mqtt_connected"))
    time.sleep(watch_s)
    result = {
        "protocol": protocol,
        "stopped": "first" if loser is a else "second" if loser is b else None,
        "seconds_to_error": round(to_error, 2),
        "loser_exit_code": loser.proc.poll() if loser and loser.proc else None,
        "errors_logged": len(events(loser, "mqtt_duplicate_node")) if loser else 0,
        "survivor_alive": winner.alive(),
        "survivor_reconnects_in_watch": len(events(winner, "mqtt_connected")) - before,
        "error": events(loser, "mqtt_duplicate_node")[0]["error"] if loser else None,
    }
    for d in (a, b):
        if d.alive():
            d.stop()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--watch-s", type=float, default=30.0)
    args = ap.parse_args()
    broker = Broker(free_port(), workdir()).start()
    try:
        runs = [one(broker, p, args.watch_s) for p in ("5", "3.1.1")]
    finally:
        broker.stop()
    print(json.dumps({"machine": machine(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
