"""Does freeing a model give its memory back? Loads and stops an Engine on each of the two
models reachable here, round after round, and prints the process's RSS after each round, with
and without what daemon/slot.py does after a model is freed (a full garbage collection, then
glibc's malloc_trim).

    python -m bench.swap_memory none|gc|trim|gc+trim [--rounds 5]
"""

from __future__ import annotations

import argparse
import ctypes
import gc

import psutil

from bench.common import report
from daemon import config, models
from daemon.engine import Engine
from daemon.engine.history import make_memory

MODELS = ("smollm2-135m", "gemma3-270m")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("none", "gc", "trim", "gc+trim"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cfg = config.parse({"node_id": "bench", "model": {"cpu_repack": "off"}})
    memory = make_memory(cfg.sessions)
    proc = psutil.Process()
    rss = []
    for _ in range(args.rounds):
        for name in MODELS:
            engine = Engine(models.locate(name, None), name, cfg.model, cfg.generation,
                            cfg.limits, memory=memory)  # fmt: skip
            engine.start()
            engine.stop(5)
            del engine
            if "gc" in args.mode:
                gc.collect()
            if "trim" in args.mode:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
        rss.append(round(proc.memory_info().rss / 2**20, 1))
    report("swap_memory", {"mode": args.mode, "rss_mib_after_each_round": rss})


if __name__ == "__main__":
    main()
