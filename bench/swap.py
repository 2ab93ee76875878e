"""Model swap without a restart (issue 19): how long a swap takes between the two models
reachable here, and what happens to work in flight when one is asked for.

Two parts, on one daemon whose model.dir holds SmolLM2-135M (chat) and Gemma 3 270M (base):
- swap time, each direction, --repeats times: the wall time of the real `ollama` client's
  request that names the other model (it waits for the swap, then gets one token), and the
  slot's own figure from the log (`model_swap_done.seconds`: drain + unload + CPU check + load
  + warm-up);
- in flight: an HTTP stream and an MQTT request running on one model when a request names the
  other; every one of them must end in its own done or a clear error, and requests sent while
  the new model loads must get 503 with Retry-After.

    python -m bench.swap [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
import uuid
from typing import Any

import httpx
import ollama

from bench.common import report, rss_mib, serving, summary, workdir
from daemon import models
from tests.helpers import LOOPBACK, Client, Daemon, poll

CHAT, BASE = "smollm2-135m", "gemma3-270m"


def models_dir() -> str:
    """A folder of this run's own with both models linked in, with their records."""
    directory = workdir() / "models"
    directory.mkdir(parents=True, exist_ok=True)
    for name in (CHAT, BASE):
        path = models.locate(name, None)
        for src in (path, path.with_name(path.name + models.SIDECAR_SUFFIX)):
            dst = directory / src.name
            if not dst.exists():
                dst.symlink_to(src) if src == path else shutil.copy(src, dst)
    return str(directory)


def api(d: Daemon) -> ollama.Client:
    return ollama.Client(host=f"http://{LOOPBACK}:{d.http_port}", timeout=300)


def swaps_done(d: Daemon) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") == "model_swap_done"]


def swap_times(d: Daemon, repeats: int) -> dict[str, Any]:
    c = api(d)
    c.generate(model=BASE, keep_alive=-1)  # start from the base model: the first swap is to CHAT
    before = len(swaps_done(d))
    walls: dict[str, list[float]] = {CHAT: [], BASE: []}
    assert d.proc is not None
    rss: list[float] = [rss_mib(d.proc.pid)]  # on the base model, before each round
    for _ in range(repeats):
        for name in (CHAT, BASE):
            t0 = time.perf_counter()
            c.generate(model=name, prompt="Once upon a time", options={"num_predict": 1})
            walls[name].append(time.perf_counter() - t0)
        rss.append(rss_mib(d.proc.pid))
    done = swaps_done(d)[before:]
    slot = {name: [e["seconds"] for e in done if e.get("new") == name] for name in (CHAT, BASE)}
    times: dict[str, Any] = {
        f"to_{name}": {"request_s": summary(walls[name]), "slot_s": summary(slot[name])}
        for name in (CHAT, BASE)
    }
    # Memory after each round trip, back on the base model: a swap must free what it loaded.
    return {**times, "rss_mib_on_base_model": [round(r, 1) for r in rss]}


def in_flight(d: Daemon) -> dict[str, Any]:
    """A stream and an MQTT request running, then a request for the other model."""
    c = api(d)
    c.generate(model=CHAT, keep_alive=-1)
    mqtt = Client(d.broker)
    topic = f"{d.prefix}/response/bench/{uuid.uuid4().hex}"
    mqtt.subscribe(topic)
    stream = c.chat(
        model=CHAT,
        messages=[{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        options={"num_predict": 96},
        stream=True,
    )
    parts = [next(stream)]
    body = {"prompt": "Name three colours.", "max_tokens": 32}
    mqtt.publish(f"{d.prefix}/request", json.dumps(body), response_topic=topic)
    result: dict[str, Any] = {}
    begun = sum(1 for e in d.log_events() if e.get("event") == "model_swap_begin")

    def swap() -> None:
        t0 = time.perf_counter()
        result["swap_request"] = c.generate(model=BASE, prompt="Once", options={"num_predict": 1})
        result["swap_request_s"] = round(time.perf_counter() - t0, 2)

    swapper = threading.Thread(target=swap)
    swapper.start()
    poll(
        lambda: sum(1 for e in d.log_events() if e.get("event") == "model_swap_begin") > begun,
        60,
        "the swap to begin",
    )
    late = httpx.post(
        f"http://{LOOPBACK}:{d.http_port}/api/chat",
        json={"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "stream": False},
        timeout=60,
    )
    parts.extend(stream)
    terminal = mqtt.until_terminal(topic, 300)[-1].body
    swapper.join(300)
    mqtt.close()
    return {
        "http_stream": {
            "done": bool(parts[-1].done),
            "done_reason": parts[-1].done_reason,
            "eval_count": parts[-1].eval_count,
        },
        "mqtt_request": {"type": terminal.get("type"), "code": terminal.get("code")},
        "request_during_load": {
            "status": late.status_code,
            "retry_after": late.headers.get("Retry-After"),
            "error": late.json().get("error"),
        },
        "swap_request": {
            "done": bool(result["swap_request"].done),
            "seconds": result["swap_request_s"],
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    settings = {"model": {"dir": models_dir()}, "governor": {"thread_sweep": False}}
    with serving(settings) as (_broker, d):
        flight = in_flight(d)
        times = swap_times(d, args.repeats)
    report("swap", {"repeats": args.repeats, "swap": times, "in_flight": flight})


if __name__ == "__main__":
    main()
