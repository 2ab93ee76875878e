"""The thread sweep: decode speed measured at each thread count, the fastest becomes the ceiling."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon import cpus
from daemon.engine import llama_compat


@dataclass(frozen=True)
class SweepResult:
    """Decode tokens/s measured at each thread count, and the count chosen as the ceiling."""

    tokens_per_s: dict[int, float]
    best: int


def _tokens_per_s(
    llm: Any, prompt: list[int], beat: Callable[[], None], tokens: int, budget_s: float
) -> float:
    """Greedy decode speed at the context's current thread count."""
    llm.reset()
    llm.set_seed(1)
    stamps: list[float] = []
    gen = llm.generate(prompt, temp=0.0)
    try:
        for _ in gen:
            beat()
            stamps.append(time.perf_counter())
            if len(stamps) > tokens or (len(stamps) >= 4 and stamps[-1] - stamps[0] > budget_s):
                break
    finally:
        gen.close()
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def sweep(
    llm: Any,
    prompt: list[int],
    threads: int,
    beat: Callable[[], None],
    tokens: int = 24,
    budget_s: float = 1.0,
) -> SweepResult:
    """Measure decode tokens/s from 1 thread to the usable CPUs; leaves the best count set.

    On big.LITTLE boards and busy small boards fewer threads are often faster, so the
    fastest count is measured, not assumed. Within 3 % of the best, fewer threads win.
    Each count gets `tokens` tokens or `budget_s` seconds, whichever ends first, so a
    count that is pathologically slow (a core taken by another process) cannot stall
    the start. beat() is called after each token (the engine's heartbeat).
    """
    results: dict[int, float] = {}
    for n in range(1, max(threads, cpus.usable()) + 1):
        llama_compat.set_threads(llm, n)
        results[n] = _tokens_per_s(llm, prompt, beat, tokens, budget_s)
    top = max(results.values())
    best = min(n for n, tps in results.items() if tps >= 0.97 * top)
    llama_compat.set_threads(llm, best)
    llm.reset()
    return SweepResult({n: round(t, 1) for n, t in results.items()}, best)
