"""Prefill at Home Assistant's length under llama.cpp's options: flash attention, batch and
micro-batch sizes, a q8_0 KV cache (issue 17: choose the defaults by measurement).

    python -m bench.prefill_options [--tokens 2760] [--rounds 3] [--threads N]

In this process, with the bundled model: for each option set, load, evaluate one short batch
(pages the weights in), then time a cold prefill of --tokens tokens (HA's system prompt and its
tools as text, as long as edgellm's compact HA prompt). The sets are interleaved over --rounds
rounds, so a burst of load elsewhere hits several of them. Prints tok/s per set (median and
range) and JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from bench import ha_fixture
from bench.common import machine
from daemon import cpus, models

SETS: dict[str, dict[str, Any]] = {
    "default (fa off, batch 256)": {"flash_attn": False, "n_batch": 256, "n_ubatch": 256},
    "fa off, batch 512": {"flash_attn": False, "n_batch": 512, "n_ubatch": 512},
    "fa on, batch 256": {"flash_attn": True, "n_batch": 256, "n_ubatch": 256},
    "fa on, batch 512": {"flash_attn": True, "n_batch": 512, "n_ubatch": 512},
    "fa on, batch 1024 / ubatch 512": {"flash_attn": True, "n_batch": 1024, "n_ubatch": 512},
    "fa on, batch 512, KV q8_0": {
        "flash_attn": True, "n_batch": 512, "n_ubatch": 512, "type_k": 8, "type_v": 8,
    },
}  # fmt: skip


def prompt_tokens(llm: Any, n: int) -> list[int]:
    text = ha_fixture.system_prompt() + "\n" + json.dumps(ha_fixture.tools())
    tokens = llm.tokenize(text.encode(), add_bos=True, special=False)
    while len(tokens) < n:
        tokens += tokens[1:]
    return tokens[:n]


def one(path: str, options: dict[str, Any], threads: int, n: int) -> float:
    from llama_cpp import Llama

    llm = Llama(
        model_path=path,
        n_ctx=n + 256,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
        **options,
    )
    try:
        tokens = prompt_tokens(llm, n)
        llm.eval(tokens[:32])
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        return n / (time.perf_counter() - t0)
    finally:
        llm.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2760)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=cpus.usable())
    args = ap.parse_args()
    path = str(models.locate(models.DEFAULT_MODEL, None))
    got: dict[str, list[float]] = {name: [] for name in SETS}
    for r in range(args.rounds):
        names = list(SETS) if r % 2 == 0 else list(SETS)[::-1]
        for name in names:
            got[name].append(round(one(path, SETS[name], args.threads, args.tokens), 1))
            print(f"round {r + 1}: {name}: {got[name][-1]} tok/s", flush=True)
    summary = {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v), "all": v}
        for name, v in got.items()
    }
    print(json.dumps({"machine": machine(), "tokens": args.tokens, "threads": args.threads,
                      "tok_s": summary}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
