"""Fleet mode: requests/s of one node vs two in a group, and where a short request goes while
one node is busy on a long generation.

Every node runs with one generation thread (model.n_threads 1, governor.thread_sweep off), and
each is pinned to a CPU of its own (its affinity, set when it starts), as if on a one-core device
of its own (`--no-pin`: both share the machine's CPUs).

Throughput: --requests short requests (max_tokens --max-tokens, greedy) sent by one MQTT v5
client keeping --window without a terminal reply; requests/s from the first send to the last
terminal reply (after --warmup requests that measure each node's speeds). First once to the
group's shared topic while A is its only member; then B joins and --rounds rounds alternate A
alone (its own topic, B idle) and the group of two (the shared topic), so that a change in the
machine's other load hits both alike. Target: two nodes >= 1.8x one (the median of the
rounds' ratios).

Routing: a --long-tokens generation is sent to node A's own topic; once it streams, --shorts
short requests go one after another to the shared topic. Target: every one answered by B (the
`node` field of `done`), none waiting behind A's generation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import Broker, Daemon, Tally, free_port, outcomes, report, run_windowed, workdir

PROMPTS = ["Name three fruits.", "Why do cats purr?", "Say hi.", "What is rain?"]
LONG_PROMPT = "Write a very long story about a dragon who learns to bake bread."


def settings(group: str) -> dict[str, Any]:
    return {
        "fleet": {"group": group},
        "model": {"n_threads": 1},
        "governor": {"thread_sweep": False},
        "limits": {"queue_size": 32},
    }


def start_pinned(broker: Broker, tmp: Path, group: str, cpu: int | None) -> Daemon:
    """A fleet node whose process may run on `cpu` only (None: anywhere); online when returned."""
    mine = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # the daemon inherits it when it is started
    try:
        d = Daemon(broker, tmp, settings=settings(group)).start(wait_online=False)
    finally:
        os.sched_setaffinity(0, mine)
    d.wait_status("online", timeout=120)
    return d


def throughput(
    tally: Tally, topic: str, n: int, window: int, max_tokens: int, tag: str
) -> dict[str, Any]:
    """n short requests to topic with `window` in flight: requests/s and who answered."""
    body = {"max_tokens": max_tokens, "temperature": 0}
    items = [(topic, f"{tag}-{i}", {**body, "prompt": PROMPTS[i % len(PROMPTS)]}) for i in range(n)]
    ids = [rid for _, rid, _ in items]
    t0 = time.monotonic()
    run_windowed(tally, items, window, timeout_s=120, deadline=t0 + 900)
    tally.wait_all(ids, 120)
    with tally.cond:
        ends = [tally.terminal_at[r] for r in ids if r in tally.terminal_at]
        nodes: dict[str, int] = {}
        for r in ids:
            for body_ in tally.terminal.get(r, [])[:1]:
                nodes[body_.get("node", "?")] = nodes.get(body_.get("node", "?"), 0) + 1
    elapsed = (max(ends) if ends else time.monotonic()) - t0
    return {
        "requests": n,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(ends) / elapsed, 3),
        "answered_by": nodes,
        **outcomes(tally, ids),
    }


def warm(tally: Tally, topic: str, n: int, tag: str) -> None:
    """A few requests so that the node has measured its speeds (admission estimates)."""
    ids = []
    for i in range(n):
        rid = f"{tag}-warm{i}"
        tally.send(topic, rid, {"prompt": "Say hi.", "max_tokens": 8, "temperature": 0})
        ids.append(rid)
        tally.wait_all([rid], 60)


def hand_backs(d: Daemon) -> int:
    return sum(1 for e in d.log_events() if e.get("event") == "fleet_hand_back")


def routing(
    tally: Tally, busy: Daemon, free: Daemon, shared: str, shorts: int, long_tokens: int
) -> dict[str, Any]:
    """Short requests to the group while `busy` runs a long generation: who answers them?"""
    long_id = f"long-{uuid.uuid4().hex[:6]}"
    handed_before = hand_backs(busy)
    tally.send(
        f"{busy.prefix}/request",
        long_id,
        {"prompt": LONG_PROMPT, "max_tokens": long_tokens, "temperature": 0, "stream": True},
    )
    deadline = time.monotonic() + 60
    while tally.deltas[long_id] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    rows = []
    for i in range(shorts):
        rid = f"short-{i}-{uuid.uuid4().hex[:4]}"
        tally.send(shared, rid, {"prompt": "Say hi.", "max_tokens": 16, "temperature": 0})
        tally.wait_all([rid], 60)
        with tally.cond:
            got = (tally.terminal.get(rid) or [{}])[0]
            latency = tally.terminal_at.get(rid, time.monotonic()) - tally.sent_at[rid]
            long_running = long_id not in tally.terminal
        rows.append(
            {
                "node": got.get("node"),
                "to_free_node": got.get("node") == free.node_id,
                "latency_ms": round(latency * 1000, 1),
                "queue_ms": got.get("timings", {}).get("queue_ms"),
                "long_still_running": long_running,
            }
        )
    tally.cancel(f"{busy.prefix}/cancel", long_id)
    tally.wait_all([long_id], 60)
    handed = hand_backs(busy) - handed_before
    return {
        "busy_node": busy.node_id,
        "free_node": free.node_id,
        "shorts": rows,
        "all_to_free_node": all(r["to_free_node"] for r in rows),
        "handed_back_by_busy_node": handed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=24, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, default=4, help="requests in flight at most")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--shorts", type=int, default=5)
    ap.add_argument("--long-tokens", type=int, default=400)
    ap.add_argument("--no-pin", action="store_true", help="do not pin each node to a CPU")
    args = ap.parse_args()

    tmp = workdir()
    broker = Broker(free_port(), tmp).start()
    group = f"bench{uuid.uuid4().hex[:4]}"
    shared = f"edgellm/fleet/{group}/request"
    nodes: list[Daemon] = []
    tally = Tally(broker, f"edgellm/fleet/{group}/response/bench")
    rounds: list[dict[str, Any]] = []
    try:
        cpus = sorted(os.sched_getaffinity(0))
        pins = cpus[:2] if len(cpus) >= 2 and not args.no_pin else [None, None]
        a = start_pinned(broker, tmp, group, pins[0])
        nodes.append(a)
        warm(tally, f"{a.prefix}/request", args.warmup, "a")
        shape = (args.requests, args.window, args.max_tokens)
        alone_in_group = throughput(tally, shared, *shape, "group1")
        b = start_pinned(broker, tmp, group, pins[1])
        nodes.append(b)
        warm(tally, f"{b.prefix}/request", args.warmup, "b")
        for r in range(args.rounds):
            one = throughput(tally, f"{a.prefix}/request", *shape, f"one{r}")
            two = throughput(tally, shared, *shape, f"two{r}")
            ratio = round(two["requests_per_s"] / one["requests_per_s"], 2)
            rounds.append({"one_node": one, "two_nodes": two, "speedup": ratio})
        route = routing(tally, a, b, shared, args.shorts, args.long_tokens)
    finally:
        tally.close()
        for d in nodes:
            d.stop()
        broker.stop()
    report(
        "fleet",
        {
            "settings": {**vars(args), "threads_per_node": 1, "node_cpus": pins},
            "one_node_alone_in_group": alone_in_group,
            "rounds": rounds,
            "one_node_rps_median": statistics.median(
                x["one_node"]["requests_per_s"] for x in rounds
            ),
            "two_nodes_rps_median": statistics.median(
                x["two_nodes"]["requests_per_s"] for x in rounds
            ),
            "speedup_median": statistics.median(x["speedup"] for x in rounds),
            "target_speedup": 1.8,
            "busy_node_routing": route,
        },
    )


if __name__ == "__main__":
    main()
