"""When the worker measures its thread counts, and the sweep's slices: owned by the worker thread.

A sweep is asked for at start, by SIGUSR1, when live decode keeps disagreeing with what the
last sweep measured, and again later when a sweep saw other processes busy (backing off from
10 s to 10 min): the count that is best while something else runs is not always best alone.
A sweep measures decode first (its result is used at once), then prompt processing, unless
the configuration fixes the prefill threads (model.n_threads_batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog

from daemon import cpus
from daemon.engine.sweep import (
    CONTENDED_CORES,
    Sweeper,
    SweepResult,
    batch_threads,
    beaten,
    disagrees,
    measure_prefill,
    measure_slice,
    prefill_tokens,
)

if TYPE_CHECKING:
    from daemon.engine.generation import Measured

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
# A prompt shorter than this says too little about prefill speed; one prefilled at under
# PREFILL_DISAGREE of the sweep's figure (a sample is a short batch early in the context, a
# real prompt runs later in it: 0.6-0.8 of it here) disagrees.
MIN_PREFILL_TOKENS = 128
PREFILL_DISAGREE = 0.4
# Disagreement does not start a sweep sooner than this after the last one ended.
MIN_GAP_S = 60.0


class ThreadTuner:
    """Plans sweeps and runs them one slice at a time; `result` is the last finished sweep."""

    def __init__(self, clock: Callable[[], float], fixed_batch: int | None = None):
        self._clock = clock
        self.result: SweepResult | None = None
        self._sweeper: Sweeper | None = None
        self._fixed_batch = fixed_batch  # model.n_threads_batch: prefill is not swept
        self._prefill: Sweeper | None = None  # the prompt-processing half, after decode
        self._due_at: float | None = None
        self._backoff = FIRST_BACKOFF_S
        # Jobs in a row far below the sweep's figure, per half ("decode", "prefill").
        self._disagree = {"decode": 0, "prefill": 0}
        self._ended_at = -MIN_GAP_S
        # A tie's winner decoding live below the faster count: measured again once, and not
        # again after that sweep (live jobs sample and detokenize, so they always run a little
        # below a slice; this alone must not keep a board sweeping).
        self._tie_checked = False
        self._tie_sweep = False
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
        if self._sweeper is not None or self._prefill is not None:
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
        at: `threads`, or the sweep's best when this slice ended its decode half."""
        if self._prompt is None:
            self._prompt = prompt()
        try:
            ended = self._slice(llm, self._prompt, threads, beat, abandon)
        except Exception:  # a failed measurement leaves the threads in place
            log.exception("thread_sweep_failed")
            self.drop()
            llm.reset()
            return threads
        if ended is None:
            return threads
        half, result = ended
        if half == "prefill":
            log.info(
                "prefill_sweep",
                tokens_per_s=result.batch_tokens_per_s,
                best=result.best_batch,
                contended=result.contended,
            )
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
    ) -> tuple[str, SweepResult] | None:
        """Measure one slice; ("decode" or "prefill", the result) when that slice ended one
        half of the sweep."""
        if self._prefill is not None:
            return self._prefill_slice(llm, prompt, beat, abandon)
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
        result = sweeper.result()
        if self.result is not None and self.result.best_batch is not None:
            # Until prefill is measured again, the last prefill figures stand.
            result = replace(
                result,
                batch_tokens_per_s=self.result.batch_tokens_per_s,
                best_batch=self.result.best_batch,
            )
        self.result = result
        self._disagree["decode"] = 0
        if self._fixed_batch is None:
            self._prefill = Sweeper(list(range(1, max(threads, cpus.usable()) + 1)))
        else:
            self._after_sweep(result)
        return "decode", result

    def _prefill_slice(
        self,
        llm: Any,
        prompt: list[int],
        beat: Callable[[], None],
        abandon: Callable[[], bool],
    ) -> tuple[str, SweepResult] | None:
        sweeper, decoded = self._prefill, self.result
        assert sweeper is not None and decoded is not None
        n = sweeper.next_count()
        assert n is not None
        tokens = prefill_tokens(max(decoded.tokens_per_s.values()))
        sample = measure_prefill(llm, prompt, n, beat, abandon, tokens)
        if sample is not None:
            tokens_per_s, others = sample
            sweeper.record(n, tokens_per_s, others is not None and others >= CONTENDED_CORES)
        if not sweeper.done:
            return None
        self._prefill = None
        self._ended_at = self._clock()
        measured = sweeper.result()
        self.result = result = replace(
            decoded,
            batch_tokens_per_s=measured.tokens_per_s,
            best_batch=measured.best,
            contended=decoded.contended + measured.contended,
        )
        self._after_sweep(result)
        return "prefill", result

    def _after_sweep(self, result: SweepResult) -> None:
        if self._tie_sweep:
            self._tie_sweep = False
        else:
            self._tie_checked = False
        if result.contended:
            # Measured while something else ran: measure again later, alone if it can be.
            self.want(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        else:
            self._backoff = FIRST_BACKOFF_S

    def batch_threads(self, threads: int) -> int:
        """Prefill threads while decode runs at `threads`: the configured count, else the
        sweep's rule (the decode count until prefill is measured)."""
        result = self.result
        if self._fixed_batch is not None:
            return self._fixed_batch
        if result is None:
            return threads
        return batch_threads(threads, result.best, result.best_batch)

    def drop(self) -> None:
        """Forget a sweep that failed halfway (the next start begins afresh)."""
        self._sweeper = self._prefill = None

    def after(self, threads: int, threads_batch: int, measured: Measured) -> None:
        """What a finished job showed, at the counts it ran with."""
        self.after_job(threads, measured.tokens, measured.tokens_per_s)
        if measured.prefill_per_s is not None:
            self.after_prefill(threads_batch, measured.fresh, measured.prefill_per_s)

    def after_job(self, threads: int, tokens: int, tokens_per_s: float) -> None:
        """A finished job's decode speed: several far below the sweep's figure re-measure."""
        result = self.result
        if result is None or threads != result.best or tokens < MIN_TOKENS or tokens_per_s <= 0:
            return
        if (
            not self._tie_checked
            and beaten(result, threads, tokens_per_s)
            and self._clock() - self._ended_at >= MIN_GAP_S
        ):
            self._tie_checked = self._tie_sweep = True
            log.info(
                "thread_sweep_tie_beaten",
                threads=threads,
                measured=round(tokens_per_s, 1),
                sweep=result.tokens_per_s,
            )
            self.want()
            return
        self._count(
            "decode",
            disagrees(result, threads, tokens_per_s),
            threads=threads,
            measured=round(tokens_per_s, 1),
            predicted=result.tokens_per_s.get(threads),
        )

    def after_prefill(self, threads_batch: int, fresh: int, tokens_per_s: float) -> None:
        """A finished job's prefill speed: several far below the sweep's figure re-measure
        (another process took a core the prefill count relied on, say)."""
        result = self.result
        if (
            result is None
            or result.batch_tokens_per_s is None
            or threads_batch != result.best_batch
            or fresh < MIN_PREFILL_TOKENS
        ):
            return
        predicted = result.batch_tokens_per_s.get(threads_batch)
        self._count(
            "prefill",
            predicted is not None and tokens_per_s < PREFILL_DISAGREE * predicted,
            threads_batch=threads_batch,
            measured=round(tokens_per_s, 1),
            predicted=predicted,
        )

    def _count(self, half: str, disagreeing: bool, **figures: Any) -> None:
        """One job's verdict on a half of the sweep: DISAGREE_JOBS in a row far below it, and
        not within MIN_GAP_S of the last sweep, measure again; one that agrees resets."""
        if not disagreeing:
            self._disagree[half] = 0
            return
        self._disagree[half] += 1
        if self._disagree[half] >= DISAGREE_JOBS and self._clock() - self._ended_at >= MIN_GAP_S:
            self._disagree[half] = 0
            event = "thread_sweep_disagrees" if half == "decode" else "prefill_sweep_disagrees"
            log.info(event, **figures)
            self.want()
