"""The thread sweep: decode speed measured at each thread count, in short slices between jobs.

A start-up sweep used to hold the worker for a second or more per count, and one sample taken
while another process was busy could lock the daemon at half speed for its life. Now:

- the sweep is cut into slices of a few tokens; the worker runs one only when no job waits,
  and a slice is abandoned (its sample dropped) the moment a job arrives, so a sweep never
  delays a request by more than one token;
- the counts are interleaved (1..N, N..1, 1..N) so a burst of load elsewhere hits several
  counts, not all samples of one;
- each count's figure is its best sample: other load only ever slows a sample down, so the
  best is the closest to what the count can do; a sample under 60 % of its count's best is a
  collapse (contention), and the count is measured again;
- the CPU time other processes take during a slice is read too: a sweep that saw such load
  is measured again later (the engine backs off), so a busy start cannot lock the daemon at
  the count that was best only while something else ran;
- a tie that costs a core (fewer threads within NEAR_BEST of the fastest count, but not it) is
  confirmed before it wins: both counts are sampled CONFIRM_ROUNDS times more, interleaved. One
  depressed sample of the faster count (seen here: 135.0 tok/s at 2 threads, which usually give
  142-147, against 132.3 at 1) otherwise kept the daemon at ~75 % speed for good;
- prompt processing is swept the same way once decode is (`measure_prefill`): a prompt is
  one big matrix product per layer and keeps gaining from cores that decode cannot use (a Pi
  5 decodes fastest on 2 threads and prefills fastest on 4), so it gets its own count
  (llama.cpp's n_threads_batch), stepped down with decode by the governor (`batch_threads`);
- `Sweeper` is pure bookkeeping (plan, samples, verdict); `measure_slice` and
  `measure_prefill` are the I/O.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.engine import kvstates, llama_compat

# A sample below this share of its count's best is taken as contention, not as the count.
COLLAPSE = 0.6
# Other processes busy on at least this many cores during a slice: the slice was contended.
CONTENDED_CORES = 0.3
# Within this share of the fastest count, fewer threads win (cooler, and a core to spare).
NEAR_BEST = 0.97
# Extra samples of each side of a tie that costs a core, before fewer threads win it.
CONFIRM_ROUNDS = 2


@dataclass(frozen=True)
class SweepResult:
    """Decode tokens/s of each thread count (its best sample), and the count chosen."""

    tokens_per_s: dict[int, float]
    best: int
    samples: int = 0  # slices measured in all
    collapsed: int = 0  # samples taken as contention (each measured again)
    contended: int = 0  # slices during which other processes were busy (CONTENDED_CORES)
    # Prompt processing: tokens/s per thread count and the count chosen (None: not swept yet).
    batch_tokens_per_s: dict[int, float] | None = None
    best_batch: int | None = None


class Sweeper:
    """The plan of one sweep and its samples; no I/O, no clock."""

    def __init__(self, counts: list[int], rounds: int = 3, max_extra: int | None = None):
        self.counts = sorted(set(counts))
        plan: list[int] = []
        for r in range(rounds):
            plan += self.counts if r % 2 == 0 else self.counts[::-1]
        self._plan = deque(plan)
        self.samples: dict[int, list[float]] = {n: [] for n in self.counts}
        self.collapsed = 0
        self.contended = 0
        self._extra_left = max_extra if max_extra is not None else 2 * len(self.counts)
        self._confirmed = False

    def next_count(self) -> int | None:
        """The thread count to measure next; None when the sweep is done."""
        return self._plan[0] if self._plan else None

    def record(self, n: int, tokens_per_s: float, contended: bool = False) -> None:
        """A finished slice at n threads; a collapse plans another sample of that count."""
        self.contended += contended
        if self._plan and self._plan[0] == n:
            self._plan.popleft()
        best = max(self.samples[n], default=0.0)
        self.samples[n].append(tokens_per_s)
        if tokens_per_s < COLLAPSE * best or (best and best < COLLAPSE * tokens_per_s):
            # One of the two is contended: measure once more so that the best of them is real.
            self.collapsed += 1
            if self._extra_left > 0:
                self._extra_left -= 1
                self._plan.append(n)
        if not self._plan and not self._confirmed:
            self._confirmed = True
            fewer, fastest = self._choice(self._figures())
            if fewer != fastest:
                self._plan.extend([fastest, fewer] * CONFIRM_ROUNDS)

    @property
    def done(self) -> bool:
        return not self._plan

    def _figures(self) -> dict[int, float]:
        """Each measured count's best sample."""
        return {n: max(s) for n, s in self.samples.items() if s}

    def _choice(self, figures: dict[int, float]) -> tuple[int, int]:
        """(the fewest threads within NEAR_BEST of the fastest count, the fastest count)."""
        top = max(figures.values())
        fastest = max(figures, key=lambda n: figures[n])
        return min(n for n, tps in figures.items() if tps >= NEAR_BEST * top), fastest

    def result(self) -> SweepResult:
        figures = self._figures()
        best, _ = self._choice(figures)
        total = sum(len(s) for s in self.samples.values())
        return SweepResult(
            {n: round(t, 1) for n, t in figures.items()},
            best,
            total,
            self.collapsed,
            self.contended,
        )


class OtherLoad:
    """CPU used by other processes over an interval, in cores (None where it cannot be read)."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        import psutil

        try:
            t = psutil.cpu_times()
        except (OSError, RuntimeError):
            return None
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        return time.perf_counter(), busy, time.process_time()

    def cores(self) -> float | None:
        end = self._read()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall = end[0] - self._start[0]
        others = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return max(0.0, others / wall)


def measure_slice(
    llm: Any,
    prompt: list[int],
    threads: int,
    beat: Callable[[], None],
    abandon: Callable[[], bool],
    tokens: int = 16,
    budget_s: float = 0.6,
) -> tuple[float, float | None] | None:
    """Decode tokens/s at `threads` (set, not restored), and the cores other processes used
    meanwhile; None when abandoned for a job.

    Each step is one single-token decode appended to whatever the KV cache holds, so there is
    no prompt to evaluate first and a job that arrives waits at most one token (a prompt's
    prefill cannot be interrupted: measured, it held each request ~150 ms). The next job's
    prefix match drops what the slice appended. `prompt` is evaluated only when the cache is
    empty or full. Ends after `tokens` steps, or after budget_s once 4 are in.
    """
    if abandon():
        return None
    llama_compat.set_threads(llm, threads)
    if llm.n_tokens == 0 or llm.n_tokens + tokens + 2 > llm.n_ctx():
        llm.reset()
        llm.eval(prompt)
    token = int(llama_compat.cached_tokens(llm)[-1])
    stamps: list[float] = []
    load = OtherLoad()
    for _ in range(tokens + 1):
        if abandon():
            return None
        llm.eval([token])
        beat()
        stamps.append(time.perf_counter())
        if len(stamps) >= 4 and stamps[-1] - stamps[0] > budget_s:
            break
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), load.cores()


# Tokens one prefill sample evaluates: about half a second of decode at the measured speed,
# within these bounds. A prefill cannot stop halfway, so a job that arrives waits for it
# (~0.1 s for SmolLM2-135M here).
PREFILL_MIN_TOKENS = 16
PREFILL_MAX_TOKENS = 128


def prefill_tokens(decode_tokens_per_s: float) -> int:
    return max(PREFILL_MIN_TOKENS, min(PREFILL_MAX_TOKENS, int(decode_tokens_per_s * 0.5)))


def measure_prefill(
    llm: Any,
    prompt: list[int],
    threads: int,
    beat: Callable[[], None],
    abandon: Callable[[], bool],
    tokens: int = 64,
) -> tuple[float, float | None] | None:
    """Prompt-processing tokens/s at `threads` (set for prefill; decode keeps its count), and
    the cores other processes used meanwhile; None when a job is waiting.

    Evaluates `tokens` tokens (the prompt's, repeated) as one batch after the prompt, which
    stays cached: nothing else is evaluated again. The next job's prefix match drops them.
    """
    if abandon():
        return None
    llama_compat.set_threads(llm, llm.n_threads, threads)
    held = kvstates.common_length(llama_compat.cached_tokens(llm), prompt)
    if held < len(prompt) or len(prompt) + tokens + 1 > llm.n_ctx():
        llm.reset()
        llm.eval(prompt)
    llm.n_tokens = len(prompt)  # eval() drops the cache past n_tokens first
    chunk = (prompt * (tokens // max(1, len(prompt)) + 1))[:tokens]
    load = OtherLoad()
    t0 = time.perf_counter()
    llm.eval(chunk)
    seconds = time.perf_counter() - t0
    beat()
    return tokens / seconds, load.cores()


def batch_threads(threads: int, ceiling: int, best_batch: int | None) -> int:
    """Prefill threads while decode runs at `threads` of the sweep's `ceiling`: the measured
    best, stepped down one for each step the governor took decode down (heat, memory)."""
    if best_batch is None:
        return threads
    return max(1, best_batch - max(0, ceiling - threads))


def disagrees(result: SweepResult, threads: int, live_tokens_per_s: float) -> bool:
    """Whether a live decode at `threads` is far slower than the sweep measured there."""
    predicted = result.tokens_per_s.get(threads)
    return predicted is not None and live_tokens_per_s < 0.7 * predicted


def beaten(result: SweepResult, threads: int, live_tokens_per_s: float) -> bool:
    """Whether `threads` won a tie against a count with more threads that measured faster,
    and a live decode at `threads` is slower than that count measured: the tie was not real,
    or no longer is."""
    own = result.tokens_per_s.get(threads)
    return own is not None and any(
        n > threads and tps > own and live_tokens_per_s < tps
        for n, tps in result.tokens_per_s.items()
    )
