"""What the governor's actions cost: a live thread change, a context rebuild, resident memory.

Targets (issue 3): a thread change under 1 ms and no reload; a context rebuild with the default
model at most 300 ms; resident memory at most model file + KV cache + 200 MB.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import psutil
import structlog

from bench.common import report
from daemon import config, models
from daemon.engine import Engine
from daemon.governor.policy import kv_bytes_per_token
from tests.test_engine_limits import submit

CFG = config.load(None)


def run(engine: Engine, body: str) -> None:
    submit(engine, body).finished.wait(120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    events: list[dict[str, Any]] = []

    def capture(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        events.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[capture])
    path = models.locate(models.DEFAULT_MODEL, None)
    engine = Engine(path, models.DEFAULT_MODEL, CFG.model, CFG.generation, CFG.limits)
    engine.start()
    proc = psutil.Process()
    rss: dict[int, int] = {}
    for n_ctx in (2048, 1024, 512):
        engine.set_limits(n_ctx=n_ctx)
        # A full context's worth of work so the KV cache is really touched.
        run(engine, '{"prompt": "' + "word " * (n_ctx // 2) + '", "max_tokens": 8}')
        rss[n_ctx] = proc.memory_info().rss
    for _ in range(args.rounds):
        for n in (1, 2):
            engine.set_limits(threads=n)
            run(engine, '{"prompt": "Hi", "max_tokens": 2}')
    for _ in range(args.rounds):
        for n_ctx in (1024, 2048):
            engine.set_limits(n_ctx=n_ctx)
            run(engine, '{"prompt": "Hi", "max_tokens": 2}')
    engine.stop(1)
    thread_us = [e["cost_us"] for e in events if e.get("event") == "threads_changed"]
    rebuild_ms = [e["cost_ms"] for e in events if e.get("event") == "context_rebuilt"]
    assert engine.info is not None
    kv_per_token = kv_bytes_per_token(engine.info.metadata)
    file_mb = path.stat().st_size / 2**20
    report(
        "governor_costs",
        {
            "thread_change_us": {"median": statistics.median(thread_us), "max": max(thread_us)},
            "context_rebuild_ms": {"median": statistics.median(rebuild_ms), "max": max(rebuild_ms)},
            "rss_mb_by_n_ctx": {k: round(v / 2**20, 1) for k, v in rss.items()},
            "budget_mb_by_n_ctx": {
                k: round(file_mb + kv_per_token * k / 2**20 + 200, 1) for k in rss
            },
        },
    )


if __name__ == "__main__":
    main()
