"""Decode tokens/s of a streamed reply over MQTT vs. in-process llama-cpp-python (target 0.95x).

Same model, threads, prompt and sampling (greedy, repeat penalty 1.1, so both produce the same
tokens). In-process: create_chat_completion(stream=True), chunk arrival times. Over MQTT: the
`delta` arrival times at a client on loopback. Decode speed = (tokens - 1) / (last - first), so
prompt processing is excluded from both. The two never run at the same time; the in-process
figure is taken before and after the MQTT runs to show drift.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path

from bench.common import Client, report, serving
from daemon import models
from daemon.engine import default_threads

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


def in_process(path: str, threads: int, max_tokens: int, runs: int) -> list[float]:
    from daemon.engine import cpuprobe
    from daemon.engine.llama_compat import load_llama

    # The same weight layout the daemon runs with on this CPU (repacking may die here).
    repack = cpuprobe.decide("auto", Path(path)).repack
    llm = load_llama(path, repack=repack, n_ctx=2048, n_threads=threads, n_batch=256, verbose=False)
    out = []
    for _ in range(runs):
        stamps = []
        for chunk in llm.create_chat_completion(
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=max_tokens,
            temperature=0,
            repeat_penalty=1.1,
            stream=True,
        ):
            if chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.monotonic())
        out.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    llm.close()
    return out


def over_mqtt(
    threads: int, max_tokens: int, runs: int, reply_qos: int
) -> tuple[list[float], list[float]]:
    # Same threads as in-process: no governor (its start-up sweep could pick another count).
    settings = {
        "model": {"n_threads": threads},
        "governor": {"enabled": False},
        "mqtt": {"reply_qos": reply_qos},
    }
    with serving(settings) as (broker, d):
        client = Client(broker)
        tps, engine_tps = [], []
        try:
            for _ in range(runs + 1):
                topic = f"{d.prefix}/response/bench/{uuid.uuid4().hex}"
                client.subscribe(topic)
                client.publish(
                    f"{d.prefix}/request",
                    json.dumps(
                        {
                            "prompt": PROMPT,
                            "max_tokens": max_tokens,
                            "temperature": 0,
                            "stream": True,
                            # A delta per token (this counts them) at the QoS asked for: deltas are
                            # coalesced per 40 ms and sent at QoS 0 by default.
                            "stream_interval_ms": 0,
                            "delta_qos": reply_qos,
                        }
                    ),
                    response_topic=topic,
                )
                stamps = []
                while True:
                    r = client.next(topic, 120)
                    if r.body["type"] != "delta":
                        break
                    stamps.append(time.monotonic())
                tps.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
                engine_tps.append(r.body["timings"]["tokens_per_s"])
        finally:
            client.close()
    return tps[1:], engine_tps[1:]  # the first run warms the page cache and the KV cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--reply-qos", type=int, default=1, choices=(0, 1, 2))
    args = ap.parse_args()
    path = str(models.locate(models.DEFAULT_MODEL, None))
    before = in_process(path, args.threads, args.max_tokens, args.runs)
    mqtt, engine = over_mqtt(args.threads, args.max_tokens, args.runs, args.reply_qos)
    after = in_process(path, args.threads, args.max_tokens, args.runs)
    base = statistics.median(before + after)
    report(
        "stream_decode_tokens_per_s",
        {
            "threads": args.threads,
            "reply_qos": args.reply_qos,
            "max_tokens": args.max_tokens,
            "in_process_before": [round(x, 1) for x in before],
            "in_process_after": [round(x, 1) for x in after],
            "mqtt_client_side": [round(x, 1) for x in mqtt],
            "daemon_reported": [round(x, 1) for x in engine],
            "ratio_median": round(statistics.median(mqtt) / base, 3),
            "target_ratio": 0.95,
        },
    )


if __name__ == "__main__":
    main()
