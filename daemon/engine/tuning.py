"""When the worker measures its thread counts, and the sweep's slices: owned by the worker thread.

A sweep is asked for at start, by SIGUSR1, when live decode keeps disagreeing with what the
last sweep measured, and again later when a sweep saw other processes busy (backing off from
10 s to 10 min): the count that is best while something else runs is not always best alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from daemon import cpus
from daemon.engine.sweep import CONTENDED_CORES, Sweeper, SweepResult, disagrees, measure_slice

log = structlog.get_logger(__name__)

# What the sweep's slices decode (greedy); the warm-up leaves it in the KV cache.
SWEEP_PROMPT = "Count slowly from one to one hundred."
FIRST_BACKOFF_S = 10.0
MAX_BACKOFF_S = 600.0
# Jobs in a row whose decode was far slower than the sweep said before measuring again.
DISAGREE_JOBS = 3
# A job shorter than this says too little about decode speed to disagree with a sweep.
MIN_TOKENS = 16
# A slice starts only after the worker has been this long without a job: back-to-back requests
# never meet a slice (each would wait up to one token for it), and a sweep waits for a pause.
IDLE_S = 0.5
# Disagreement does not start a sweep sooner than this after the last one ended.
MIN_GAP_S = 60.0


class ThreadTuner:
    """Plans sweeps and runs them one slice at a time; `result` is the last finished sweep."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self.result: SweepResult | None = None
        self._sweeper: Sweeper | None = None
        self._due_at: float | None = None
        self._backoff = FIRST_BACKOFF_S
        self._disagree = 0
        self._ended_at = -MIN_GAP_S
        self._prompt: list[int] | None = None  # the sweep's prompt, encoded once
        self._busy_at = float("-inf")  # when the worker last had a job

    def want(self, delay_s: float = 0.0) -> None:
        """Measure (again) once idle, after delay_s; an earlier plan wins."""
        due = self._clock() + delay_s
        self._due_at = due if self._due_at is None else min(self._due_at, due)

    def busy(self) -> None:
        """The worker took a job: the next slice waits for IDLE_S without one."""
        self._busy_at = self._clock()

    def pending(self) -> bool:
        """Whether a slice should run now (the worker runs it when no job waits)."""
        now = self._clock()
        if now - self._busy_at < IDLE_S:
            return False
        if self._sweeper is not None:
            return True
        return self._due_at is not None and now >= self._due_at

    def step(
        self,
        llm: Any,
        prompt: Callable[[], list[int]],
        threads: int,
        beat: Callable[[], None],
        abandon: Callable[[], bool],
    ) -> int:
        """Run one slice (leaving the context at its count); the thread count jobs should run
        at: `threads`, or the sweep's best when this slice ended it."""
        if self._prompt is None:
            self._prompt = prompt()
        try:
            result = self._slice(llm, self._prompt, threads, beat, abandon)
        except Exception:  # a failed measurement leaves the threads in place
            log.exception("thread_sweep_failed")
            self.drop()
            llm.reset()
            return threads
        if result is None:
            return threads
        log.info(
            "thread_sweep",
            tokens_per_s=result.tokens_per_s,
            best=result.best,
            samples=result.samples,
            collapsed=result.collapsed,
            contended=result.contended,
        )
        return result.best

    def _slice(
        self,
        llm: Any,
        prompt: list[int],
        threads: int,
        beat: Callable[[], None],
        abandon: Callable[[], bool],
    ) -> SweepResult | None:
        """Measure one slice; the result when that slice ended the sweep."""
        if self._sweeper is None:
            self._due_at = None
            self._sweeper = Sweeper(list(range(1, max(threads, cpus.usable()) + 1)))
        sweeper = self._sweeper
        n = sweeper.next_count()
        assert n is not None
        sample = measure_slice(llm, prompt, n, beat, abandon)
        if sample is not None:
            tokens_per_s, others = sample
            sweeper.record(n, tokens_per_s, others is not None and others >= CONTENDED_CORES)
        if not sweeper.done:
            return None
        self._sweeper = None
        self._ended_at = self._clock()
        self.result = result = sweeper.result()
        self._disagree = 0
        if result.contended:
            # Measured while something else ran: measure again later, alone if it can be.
            self.want(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        else:
            self._backoff = FIRST_BACKOFF_S
        return result

    def drop(self) -> None:
        """Forget a sweep that failed halfway (the next start begins afresh)."""
        self._sweeper = None

    def after_job(self, threads: int, tokens: int, tokens_per_s: float) -> None:
        """A finished job's decode speed: several far below the sweep's figure re-measure."""
        result = self.result
        if result is None or threads != result.best or tokens < MIN_TOKENS or tokens_per_s <= 0:
            return
        if not disagrees(result, threads, tokens_per_s):
            self._disagree = 0
            return
        self._disagree += 1
        if self._disagree >= DISAGREE_JOBS and self._clock() - self._ended_at >= MIN_GAP_S:
            self._disagree = 0
            log.info(
                "thread_sweep_disagrees",
                threads=threads,
                measured=round(tokens_per_s, 1),
                predicted=result.tokens_per_s.get(threads),
            )
            self.want()
