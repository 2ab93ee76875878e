"""Live limits: a thread count or context length asked for by any thread, applied by the worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from daemon.engine import llama_compat

log = structlog.get_logger(__name__)


class LiveLimits:
    """The worker's current (threads, n_ctx) and the values other threads asked for.

    Other threads only write the wanted values; the worker applies them at a safe point:
    threads between tokens (llama_set_n_threads, microseconds), the context between jobs (a
    rebuild of the KV cache). Prefill threads follow the decode count through `batch_of`
    (the thread sweep's rule, tuning.ThreadTuner.batch_threads).
    """

    def __init__(self) -> None:
        self.want_threads: int | None = None
        self.want_ctx: int | None = None
        self.threads = 0
        self.n_ctx = 0
        self.batch_of: Callable[[int], int] = lambda threads: threads

    def _claim(self, wanted: str, current: int) -> int | None:
        """Take the value asked for under `wanted` (clearing it); None if none or no change."""
        want = getattr(self, wanted)
        if want is None:
            return None
        setattr(self, wanted, None)
        return None if want == current else int(want)

    def apply_threads(self, llm: Any) -> None:
        want = self._claim("want_threads", self.threads)
        if want is None:
            return
        t0 = time.perf_counter()
        batch = self.batch_of(want)
        llama_compat.set_threads(llm, want, batch)
        log.info(
            "threads_changed",
            old=self.threads,
            new=want,
            batch=batch,
            cost_us=round((time.perf_counter() - t0) * 1e6, 1),
        )
        self.threads = want

    def set_now(self, llm: Any, threads: int) -> None:
        """The worker's own change (the thread sweep's count): applied at once."""
        llama_compat.set_threads(llm, threads, self.batch_of(threads))
        self.threads = threads

    def apply_ctx(self, llm: Any, warm_up: Callable[[], float]) -> None:
        want = self._claim("want_ctx", self.n_ctx)
        if want is None:
            return
        t0 = time.perf_counter()
        llama_compat.rebuild_context(llm, want)
        cost_ms = (time.perf_counter() - t0) * 1000
        old, self.n_ctx = self.n_ctx, want
        log.info(
            "context_rebuilt",
            old=old,
            new=want,
            cost_ms=round(cost_ms, 1),
            warm_up_ms=round(warm_up(), 1),
        )
