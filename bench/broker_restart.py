"""Broker restart in the middle of a streamed reply: does a persistent-session client still get
every delta and the `done` (docs/PROTOCOL.md, "Keeping replies through a broker restart")?

A mosquitto with persistence on, a daemon, and a client with a persistent MQTT v5 session
(fixed client id, clean_start false, Session Expiry Interval, QoS 1 subscription to its reply
topic). The client asks for a --tokens-token streamed reply (greedy; a prompt found beforehand
to run the whole length rather than end its turn early); after --restart-after deltas the
broker is terminated (it saves its sessions) and started again on the same port. The client
drops a delta whose seq it has seen (counted as a duplicate) and checks that it got every seq
0..N-1 and the done. Repeated --runs times, each with a session of its own.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import Broker, Client, Daemon, report, serving, settle, threads_arg
from tests.helpers import nodelay

# Prompts that ask for a long answer; the first that runs the full length without ending its
# turn is used (which one does depends on the CPU's kernels). A stop string nobody writes keeps
# the request's shape the same as a real client's.
PROMPTS = [
    "Write a long, detailed story about a lighthouse keeper and a storm.",
    "List one hundred animals, one per line, each with a short description.",
    "Explain in great detail how a steam engine works, step by step.",
    "Write a very long poem about the sea, with many verses.",
]
NEVER = "\u2403never-said\u2403"


@dataclass
class PersistentBroker(Broker):
    """The tests' broker with persistence on: sessions and queued QoS 1 messages survive a
    clean restart (mosquitto writes its database when terminated). persistence=False gives the
    contrast: the session, and what was queued for it, is gone after the restart."""

    persistence: bool = True
    store: Path | None = None

    def persistence_conf(self) -> str:
        # Started as root, mosquitto drops to the `mosquitto` user: its database directory must
        # be one that user can reach and write (the private work dir is not).
        if self.store is None:  # the same one across restarts
            self.store = Path(tempfile.mkdtemp(prefix="edgellm-broker-db-"))
            self.store.chmod(0o777)
        return (
            f"persistence {'true' if self.persistence else 'false'}\n"
            f"persistence_location {self.store}/\n"
        )


@dataclass
class Stream:
    """What a persistent client saw of one streamed request."""

    seqs: dict[int, str]
    duplicates: int = 0
    done: dict[str, Any] | None = None
    connects: int = 0


class SessionClient:
    """A paho MQTT v5 client with a persistent session that records one request's stream."""

    def __init__(
        self, broker: Broker, client_id: str, reply_topic: str, expiry_s: int, delay_s: int
    ):
        self.reply_topic = reply_topic
        self.stream = Stream({})
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.connected = threading.Event()
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        self.c.on_socket_open = nodelay
        self.c.reconnect_delay_set(min_delay=delay_s, max_delay=delay_s)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry_s
        self.c.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.c.loop_start()
        if not self.connected.wait(10):
            raise TimeoutError("the session client did not connect")

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            return
        with self.changed:
            self.stream.connects += 1
            self.changed.notify_all()
        # Subscribing again is harmless when the broker kept the session, needed when not.
        client.subscribe(self.reply_topic, qos=1)
        self.connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        with self.changed:
            if body.get("type") == "delta":
                if body["seq"] in self.stream.seqs:
                    self.stream.duplicates += 1
                else:
                    self.stream.seqs[body["seq"]] = body["text"]
            elif body.get("type") in ("done", "error"):
                if self.stream.done is None:
                    self.stream.done = body
                else:
                    self.stream.duplicates += 1
            self.changed.notify_all()

    def request(self, request_topic: str, body: dict[str, Any]) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = b"restart"
        self.c.publish(request_topic, json.dumps(body), qos=1, properties=props)

    def wait(self, predicate: Any, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.stream), timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def find_prompt(broker: Broker, d: Daemon, tokens: int) -> tuple[str, int]:
    """The first prompt whose greedy answer runs all `tokens` tokens (else the longest one)."""
    client = Client(broker)
    best = ("", -1)
    try:
        for prompt in PROMPTS:
            topic = f"{d.prefix}/response/restart/probe{uuid.uuid4().hex[:6]}"
            client.subscribe(topic)
            body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "seed": 1}
            client.publish(f"{d.prefix}/request", json.dumps({**body, "stop": [NEVER]}), topic)
            done = client.until_terminal(topic, 300)[-1].body
            got = done.get("usage", {}).get("completion_tokens", 0)
            if got > best[1]:
                best = (prompt, got)
            if got >= tokens:
                break
    finally:
        client.close()
    return best


def one_run(
    broker: Broker, d: Daemon, prompt: str, args: argparse.Namespace, run: int
) -> dict[str, Any]:
    reply_topic = f"{d.prefix}/response/restart/r{run}-{uuid.uuid4().hex[:6]}"
    client_id = f"restart-bench-{run}-{uuid.uuid4().hex[:6]}"
    client = SessionClient(broker, client_id, reply_topic, 300, args.client_reconnect_s)
    try:
        body = {
            "id": f"restart-{run}-{uuid.uuid4().hex[:6]}",
            "prompt": prompt,
            "max_tokens": args.tokens,
            "temperature": 0,
            "seed": 1,
            "stream": True,
            # Every delta must survive the restart: QoS 1 (deltas default to QoS 0), and one per
            # token as when this was first measured (they are coalesced per 40 ms by default).
            "delta_qos": 1,
            "stream_interval_ms": 0,
            "stop": [NEVER],
        }
        client.request(f"{d.prefix}/request", body)
        client.wait(lambda s: len(s.seqs) >= args.restart_after or s.done is not None, 120)
        with client.lock:
            seen_before = len(client.stream.seqs)
            mid_stream = client.stream.done is None and seen_before > 0
        t0 = time.monotonic()
        broker.stop()
        stopped = time.monotonic()
        broker.start()
        listening = time.monotonic()
        reconnected = client.wait(lambda s: s.connects >= 2, 30)
        back = time.monotonic()
        ended = client.wait(lambda s: s.done is not None, args.timeout_s)
        # A late redelivery of something already seen still counts as a duplicate.
        time.sleep(args.quiet_s)
        with client.lock:
            s = client.stream
            n = (s.done or {}).get("seq", 0)  # done gives the number of deltas sent
            gapless = sorted(s.seqs) == list(range(n))
            streamed = "".join(s.seqs[i] for i in sorted(s.seqs))
            text_ok = s.done is not None and streamed == s.done.get("text")
            end = s.done or {}
            return {
                "complete": bool(ended and end.get("type") == "done" and gapless),
                "text_matches_done": text_ok,
                "terminal": end.get("type"),
                "finish_reason": end.get("finish_reason") or end.get("code"),
                "completion_tokens": end.get("usage", {}).get("completion_tokens"),
                "deltas": n,
                "received_distinct": len(s.seqs),
                "missing": sorted(set(range(n)) - set(s.seqs))[:20],
                "duplicates": s.duplicates,
                "deltas_before_restart": seen_before,
                "restarted_mid_stream": mid_stream,
                "broker_down_s": round(listening - t0, 3),
                "broker_stop_s": round(stopped - t0, 3),
                "client_reconnected_after_s": round(back - t0, 3) if reconnected else None,
                "client_connects": s.connects,
            }
    finally:
        client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=200, help="max_tokens of the streamed request")
    ap.add_argument("--restart-after", type=int, default=50, help="deltas before the restart")
    ap.add_argument("--timeout-s", type=float, default=120.0, help="wait for the done after it")
    ap.add_argument("--quiet-s", type=float, default=2.0, help="wait for late duplicates")
    threads_arg(ap)
    ap.add_argument(
        "--client-reconnect-s",
        type=int,
        default=3,
        help="the client's reconnect delay; longer than the daemon's (1 s), so the rest of the "
        "stream reaches the broker while the client is away and must wait in its session",
    )
    ap.add_argument(
        "--no-persistence", action="store_true", help="the broker without persistence (contrast)"
    )
    args = ap.parse_args()

    def persistent(port: int, tmp: Path) -> PersistentBroker:
        return PersistentBroker(port, tmp, persistence=not args.no_persistence)

    runs = []
    with serving(threads=args.threads, broker=persistent) as (broker, d):
        settle(d)
        prompt, tokens = find_prompt(broker, d, args.tokens)
        for run in range(args.runs):
            runs.append(one_run(broker, d, prompt, args, run))
        alive = d.alive()
    report(
        "broker_restart",
        {
            "runs": runs,
            "complete": sum(1 for r in runs if r["complete"]),
            "of": len(runs),
            "prompt": prompt,
            "tokens_requested": args.tokens,
            "tokens_the_prompt_ran": tokens,
            "ran_full_length": tokens >= args.tokens,
            "restart_after_deltas": args.restart_after,
            "broker_persistence": not args.no_persistence,
            "client_reconnect_s": args.client_reconnect_s,
            "daemon_alive_at_end": alive,
        },
    )


if __name__ == "__main__":
    main()
