"""Prefill at Home Assistant's length with prompt threads chosen by the thread sweep ("tuned")
against prompt threads tied to the decode count ("tied", what edgellm did before), with
another process busy on one core (25 % of every 100 ms by default).

    python -m bench.prefill_threads [--runs 2] [--load 0.25] [--cold 3]

Each run starts the daemon twice on one broker, under the same load: first with the sweep
choosing both counts (its decode and prefill figures per thread count are read from the
status message), then with model.n_threads_batch fixed to the decode count that sweep chose.
Each daemon answers --cold HA first calls (bench/ha_fixture.py, Ollama shape, not streamed),
each made cold by a nonce at the head of the system prompt; prefill tok/s is the reply's
prompt_eval_count / prompt_eval_duration. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import urllib.request
import uuid
from typing import Any

from bench import ha_fixture
from bench.common import Broker, Daemon, free_port, machine, settle, workdir

BUSY = """
import os, time
os.sched_setaffinity(0, {0})
share = float(os.environ["SHARE"])
while True:
    end = time.perf_counter() + 0.1 * share
    while time.perf_counter() < end:
        pass
    time.sleep(0.1 * (1 - share))
"""


def cold_call(port: int) -> dict[str, Any]:
    """HA's first Ollama call of a conversation, its system prompt made unique: the whole
    prompt is evaluated."""
    kwargs = dict(ha_fixture.ollama_calls(0)[0].kwargs)
    messages = [dict(m) for m in kwargs["messages"]]
    messages[0]["content"] = f"[{uuid.uuid4().hex}] " + messages[0]["content"]
    body = {**kwargs, "messages": messages, "stream": False}
    body["options"] = {**body["options"], "num_predict": 8}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/chat",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        reply = json.load(resp)
    n, ns = reply["prompt_eval_count"], reply["prompt_eval_duration"]
    return {"prompt_tokens": n, "prefill_s": round(ns / 1e9, 2), "tok_s": round(n / ns * 1e9, 1)}


def one(broker: Broker, settings: dict[str, Any], cold: int) -> dict[str, Any]:
    d = Daemon(broker, workdir(), settings=settings).start()
    try:
        if not settle(d):
            raise RuntimeError(f"the sweep did not end:\n{d.log()[-2000:]}")
        status = d.wait_status("online")
        calls = [cold_call(d.http_port) for _ in range(cold)]
    finally:
        d.stop()
    return {
        "threads": status.get("threads"),
        "threads_batch": status.get("threads_batch", settings["model"].get("n_threads_batch")),
        "decode_sweep": status.get("thread_sweep"),
        "prefill_sweep": status.get("prefill_sweep"),
        "calls": calls,
        "median_tok_s": statistics.median(c["tok_s"] for c in calls),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--load", type=float, default=0.25, help="share of one core kept busy")
    ap.add_argument("--cold", type=int, default=3, help="cold HA calls per daemon")
    args = ap.parse_args()
    broker = Broker(free_port(), workdir()).start()
    busy = None
    if args.load > 0:
        env = {**os.environ, "SHARE": str(args.load)}
        busy = subprocess.Popen([sys.executable, "-c", BUSY], env=env)
    runs = []
    try:
        for _ in range(args.runs):
            tuned = one(broker, {"model": {}}, args.cold)
            tied = one(broker, {"model": {"n_threads_batch": tuned["threads"]}}, args.cold)
            runs.append({"tuned": tuned, "tied": tied})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    finally:
        if busy is not None:
            busy.kill()
        broker.stop()
    print(json.dumps({"machine": machine(), "load": args.load, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
