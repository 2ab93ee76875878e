"""Decode speed under a steady background load: which thread count, and spinning or sleeping?

    python -m bench.contention [--runs 5] [--tokens 128] [--loads 0,0.25,0.5]

llama-bench (built by bench/llamacpp_build.py) tg at each thread count from 1 to the usable
CPUs, under each OpenMP wait policy, with another process busy a share of one core
(bench/peers.Load). The pip build of llama-cpp-python uses OpenMP, whose barrier is
`#pragma omp barrier`: llama.cpp's own `--poll` does nothing there, and libgomp's threads spin a
while before they sleep unless OMP_WAIT_POLICY=passive. Tells whether fewer threads, or
sleeping instead of spinning, keeps more speed when something else runs (a broker, HA).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess

from bench import llamacpp_build
from bench.common import report
from bench.peers import Load
from daemon import cpus, models

POLICIES: dict[str, dict[str, str]] = {"default": {}, "passive": {"OMP_WAIT_POLICY": "passive"}}


def tg(binary: str, model: str, threads: int, policy: str, tokens: int, runs: int) -> float:
    cmd = [binary, "-m", model, "-t", str(threads), "-p", "0", "-n", str(tokens)]
    cmd += ["-r", str(runs), "--repack", "0", "-o", "json"]
    env = {**os.environ, **POLICIES[policy]}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
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
                for policy in POLICIES:
                    key = f"t{threads}_{policy}"
                    row[key] = tg(binary, model, threads, policy, args.tokens, args.runs)
        table[f"load {share:.0%}"] = row
    report("contention", {"tg_tokens_per_s": table, "tokens": args.tokens, "runs": args.runs})


if __name__ == "__main__":
    main()
