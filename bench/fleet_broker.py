"""What does mosquitto do with a busy member of an MQTT v5 shared subscription?

Two paho v5 subscribers, A and B, on `$share/g/x/request`, a publisher sending QoS 1 messages
to `x/request` one at a time (each waits for its PUBACK, then 50 ms). Five scenarios:

- default: default Receive Maximum, automatic acks. Where does each message go?
- hold: both connect with Receive Maximum 1 and acknowledge by hand; A holds the PUBACK of the
  first message it gets (a node busy on a long generation), B acknowledges at once. Do further
  messages go to the free B, or queue in A's session behind the held one?
- unsubscribe: automatic acks; A unsubscribes from the shared topic the moment it gets a
  message (busy) and subscribes again after --busy-s. Where do messages go meanwhile?
- unsubscribe-all: both A and B unsubscribe on their first message (every node busy): what
  becomes of the messages published while the group has no member?
- hand-back: automatic acks; A, busy after its first message, publishes every further one back
  to the shared topic (what edgellm's fleet mode does): where does it land?

Prints, per scenario, each message's receivers and how long after publishing it reached each
(in hand-back, A's entries are the deliveries it gave back)
(a message queued behind A's held ack arrives only after A releases it).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import Broker, free_port, machine, nodelay, workdir

SHARED = "$share/g/x/request"
TOPIC = "x/request"
SCENARIOS = ("default", "hold", "unsubscribe", "unsubscribe-all", "hand-back")


class Member:
    """One subscriber of the shared subscription; records (message, arrival) pairs."""

    def __init__(self, name: str, broker: Broker, receive_max: int | None, manual: bool):
        self.name = name
        self.got: list[tuple[str, float]] = []
        self.held: list[tuple[int, int]] = []
        self.hold_first = False
        self.unsubscribe_when_busy = False
        self.hand_back = False
        self.busy_s = 0.0
        self.manual = manual
        self._subscribed = threading.Event()
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{name}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self.c.on_socket_open = nodelay
        self.c.manual_ack_set(manual)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *_a: self._subscribed.set()
        props = None
        if receive_max is not None:
            props = Properties(PacketTypes.CONNECT)
            props.ReceiveMaximum = receive_max
        self.c.connect(broker.host, broker.port, properties=props)
        self.c.loop_start()
        self.subscribe()

    def subscribe(self) -> None:
        self._subscribed.clear()
        self.c.subscribe(SHARED, qos=1)
        if not self._subscribed.wait(5):
            raise TimeoutError(f"{self.name}: no SUBACK")

    def _on_message(self, c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.got.append((msg.payload.decode(), time.monotonic()))
        first = len(self.got) == 1
        if self.unsubscribe_when_busy and first:
            c.unsubscribe(SHARED)
            threading.Timer(self.busy_s, self._free).start()
        if self.hand_back and not first:
            # Busy: give it back to the group (the broker's round robin picks the next member).
            c.publish(TOPIC, msg.payload, qos=1)
        if self.manual:
            if self.hold_first and first:
                self.held.append((msg.mid, msg.qos))
            else:
                c.ack(msg.mid, msg.qos)

    def _free(self) -> None:
        self.c.subscribe(SHARED, qos=1)

    def release(self) -> None:
        for mid, qos in self.held:
            self.c.ack(mid, qos)
        self.held.clear()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def publish_all(broker: Broker, n: int, gap_s: float) -> dict[str, float]:
    pub = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"pub-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv5,
    )
    pub.on_socket_open = nodelay
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    sent = {}
    for i in range(n):
        name = f"m{i}"
        sent[name] = time.monotonic()
        pub.publish(TOPIC, name, qos=1).wait_for_publish(5)
        time.sleep(gap_s)
    pub.disconnect()
    pub.loop_stop()
    return sent


def scenario(broker: Broker, kind: str, n: int, gap_s: float, busy_s: float) -> dict[str, Any]:
    manual = kind == "hold"
    rmax = 1 if manual else None
    a = Member("A", broker, rmax, manual)
    b = Member("B", broker, rmax, manual)
    a.hold_first = manual
    a.unsubscribe_when_busy = kind in ("unsubscribe", "unsubscribe-all")
    b.unsubscribe_when_busy = kind == "unsubscribe-all"
    a.hand_back = kind == "hand-back"
    a.busy_s = b.busy_s = busy_s
    sent = publish_all(broker, n, gap_s)
    time.sleep(0.5)
    before_release = {m.name: [p for p, _ in m.got] for m in (a, b)}
    if manual:
        # A's long job ends: it acknowledges, and whatever the broker queued for it comes now.
        a.release()
    time.sleep(max(0.5, busy_s + 0.5 - (time.monotonic() - max(sent.values()))))
    where: dict[str, list[str]] = {}
    for m in (a, b):
        for payload, at in m.got:
            where.setdefault(payload, []).append(f"{m.name} {(at - sent[payload]) * 1000:.1f} ms")
    a.close()
    b.close()
    return {
        "scenario": kind,
        "receive_maximum": rmax,
        "received_before_A_freed": before_release,
        "messages": {p: where.get(p, "LOST") for p in sent},
        "lost": sum(1 for p in sent if p not in where),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=8)
    ap.add_argument("--gap-s", type=float, default=0.05, help="pause between publishes")
    ap.add_argument("--busy-s", type=float, default=1.5, help="A's busy time (unsubscribe)")
    args = ap.parse_args()
    broker = Broker(free_port(), workdir()).start()
    version = ""
    try:
        results = [
            scenario(broker, kind, args.messages, args.gap_s, args.busy_s) for kind in SCENARIOS
        ]
    finally:
        broker.stop()
    log = (broker.workdir / "mosquitto.log").read_text(errors="replace")
    for line in log.splitlines():
        if "version" in line:
            version = line.split("mosquitto version", 1)[-1].split()[0]
            break
    print(
        json.dumps(
            {
                "bench": "fleet_broker",
                "machine": machine(),
                "mosquitto": version,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
