"""MQTT overhead: wall time of a non-streamed request minus the engine's own time (target 5 ms).

The client measures wall time from just before PUBLISH to the `done` reply arriving. The
engine's own time is the reply's total_ms minus queue_ms (generation, from dequeue to the last
token). What is left is broker round trips, parsing, queueing hand-off and publishing.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from bench.common import Client, percentile, report, serving, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args()
    with serving() as (broker, d):
        client = Client(broker)
        topic = f"{d.prefix}/response/bench/{uuid.uuid4().hex}"
        client.subscribe(topic)
        body = json.dumps({"prompt": "Say OK.", "max_tokens": args.max_tokens, "temperature": 0})
        overheads, walls, engines = [], [], []
        try:
            for i in range(args.requests + 5):
                t0 = time.monotonic()
                client.c.publish(f"{d.prefix}/request", body, qos=1, properties=_props(topic))
                reply = client.next(topic, 60)
                wall_ms = (time.monotonic() - t0) * 1000
                assert reply.body["type"] == "done", reply.body
                t = reply.body["timings"]
                engine_ms = t["total_ms"] - t["queue_ms"]
                if i >= 5:  # warm-up excluded
                    walls.append(wall_ms)
                    engines.append(engine_ms)
                    overheads.append(wall_ms - engine_ms)
        finally:
            client.close()
    report(
        "mqtt_overhead_ms",
        {
            "overhead_ms": {**summary(overheads), "p99": percentile(overheads, 99)},
            "wall_ms": summary(walls),
            "engine_ms": summary(engines),
            "max_tokens": args.max_tokens,
            "target_ms": 5.0,
        },
    )


def _props(topic: str):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = topic
    p.CorrelationData = b"bench"
    return p


if __name__ == "__main__":
    main()
