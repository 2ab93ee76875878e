"""How soon a wedged inference worker is reported to systemd (target: within WatchdogSec).

The service runs in-process against a real broker with an engine whose generation hangs (the
test seam of tests/test_service_notify.py), WatchdogSec = 2 s through WATCHDOG_USEC, and a
datagram socket standing in for $NOTIFY_SOCKET. Measured: from the moment the worker stops
(the job starts hanging) to WATCHDOG=trigger arriving on the socket.
"""

from __future__ import annotations

import argparse
import json
import uuid

from bench.common import Broker, Client, free_port, report, workdir
from tests.test_service_notify import HangingEngine, run_service


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = workdir()
    broker = Broker(free_port(), tmp).start()
    latencies = []
    try:
        for _ in range(args.runs):
            HangingEngine.release.clear()
            service, notify, thread = run_service(broker, tmp, HangingEngine)
            notify.wait_for("READY", "1", 60)
            client = Client(broker)
            topic = f"{service.topics.base}/response/bench/{uuid.uuid4().hex}"
            client.subscribe(topic)
            client.publish(
                service.topics.request, json.dumps({"prompt": "hi"}), response_topic=topic
            )
            notify.wait_for("WATCHDOG", "trigger", 30)
            at = next(t for t, m in notify.messages if m.get("WATCHDOG") == "trigger")
            assert HangingEngine.hung_at is not None
            latencies.append(at - HangingEngine.hung_at)
            client.close()
            HangingEngine.release.set()
            service.stop_event.set()
            thread.join(30)
    finally:
        broker.stop()
    report(
        "watchdog_detection_s",
        {"watchdog_sec": 2.0, "wedge_to_trigger_s": [round(x, 2) for x in latencies]},
    )


if __name__ == "__main__":
    main()
