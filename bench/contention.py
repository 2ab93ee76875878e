"""Decode speed under a steady background load: which thread count, and spinning or yielding?

    python -m bench.contention [--runs 5] [--tokens 128] [--loads 0,0.25,0.5]

llama-bench (built by bench/llamacpp_build.py) tg at each thread count from 1 to the usable
CPUs, with llama.cpp's worker threads polling (spinning, `--poll 50`, its default) or not
(`--poll 0`, they sleep until work comes), each with another process busy a share of one core
(bench/peers.Load). Tells whether the governor should pick fewer threads, or yielding, when
something else runs on the device (a broker, Home Assistant).
"""

from __future__ import annotations

import argparse
import json
import subprocess

from bench import llamacpp_build
from bench.common import report
from bench.peers import Load
from daemon import cpus, models


def tg(binary: str, model: str, threads: int, poll: int, tokens: int, runs: int) -> float:
    out = subprocess.run(
        [
            binary,
            "-m",
            model,
            "-t",
            str(threads),
            "-p",
            "0",
            "-n",
            str(tokens),
            "-r",
            str(runs),
            "--poll",
            str(poll),
            "--repack",
            "0",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return round(float(json.loads(out)[0]["avg_ts"]), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--loads", default="0,0.25,0.5")
    args = ap.parse_args()
    binary = str(llamacpp_build.binaries()["llama-bench"])
    model = str(models.locate(models.DEFAULT_MODEL, None))
    table: dict[str, dict[str, float]] = {}
    for share in (float(x) for x in args.loads.split(",")):
        row = {}
        with Load(share):
            for threads in range(1, cpus.usable() + 1):
                for poll in (50, 0):
                    row[f"t{threads}_poll{poll}"] = tg(
                        binary, model, threads, poll, args.tokens, args.runs
                    )
        table[f"load {share:.0%}"] = row
    report("contention", {"tg_tokens_per_s": table, "tokens": args.tokens, "runs": args.runs})


if __name__ == "__main__":
    main()
