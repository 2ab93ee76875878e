"""Accepted work: a Job ends in exactly one terminal reply; JobQueue bounds the wait."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from typing import Protocol

from daemon.messages import Done, ErrorCode, Request


class ReplySink(Protocol):
    """Where a job's replies go. The engine knows nothing of MQTT; the service implements this."""

    def delta(self, request: Request, seq: int, text: str) -> None: ...

    def done(self, request: Request, done: Done) -> None: ...

    def error(self, request: Request, code: ErrorCode, message: str, extra: dict) -> None: ...


class Job:
    """One accepted request; finish() guarantees a single terminal reply whoever calls it."""

    def __init__(self, request: Request, sink: ReplySink):
        self.request = request
        self.sink = sink
        # Lower runs first: 0 interactive, 1 background (messages.Priority).
        self.priority = int(request.priority)
        # Worst-case run time by the measured speeds (admission); None before any measurement.
        self.estimate_s: float | None = None
        self.started_at: float | None = None
        self.cancelled = threading.Event()
        self._finished = False
        self._lock = threading.Lock()

    @property
    def finished(self) -> bool:
        return self._finished

    def _claim(self) -> bool:
        with self._lock:
            if self._finished:
                return False
            self._finished = True
            return True

    def finish_done(self, done: Done) -> bool:
        """Send the `done` reply unless a terminal reply was already sent."""
        if not self._claim():
            return False
        self.sink.done(self.request, done)
        return True

    def finish_error(self, code: ErrorCode, message: str, extra: dict | None = None) -> bool:
        """Send an `error` reply unless a terminal reply was already sent."""
        if not self._claim():
            return False
        self.sink.error(self.request, code, message, extra or {})
        return True


class QueueFull(Exception):
    """The bounded queue has no room: the caller answers `busy`."""


class JobQueue:
    """A bounded queue of waiting jobs, lowest priority number first, then first come."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._heap: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._by_id: dict[str, Job] = {}

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def put(self, job: Job) -> Job | None:
        """Queue a job or raise QueueFull; never blocks.

        When full, a job displaces the newest waiting job of a lower priority (a larger number),
        which is returned for the caller to answer `busy`.
        """
        with self._cond:
            displaced = None
            if len(self._heap) >= self.maxsize:
                worst = max(self._heap, key=lambda e: (e[0], e[1]), default=None)
                if worst is None or worst[0] <= job.priority:
                    raise QueueFull
                self._heap.remove(worst)
                heapq.heapify(self._heap)
                displaced = worst[2]
                self._by_id.pop(displaced.request.id, None)
            heapq.heappush(self._heap, (job.priority, next(self._seq), job))
            self._by_id[job.request.id] = job
            self._cond.notify()
            return displaced

    def snapshot(self) -> list[Job]:
        """The waiting jobs in the order they will run."""
        with self._cond:
            return [j for _, _, j in sorted(self._heap, key=lambda e: (e[0], e[1]))]

    def remove_if(self, predicate: Callable[[Job], bool]) -> list[Job]:
        """Remove and return the waiting jobs for which predicate holds (expired deadlines)."""
        with self._cond:
            gone = [e for e in self._heap if predicate(e[2])]
            if gone:
                self._heap = [e for e in self._heap if not predicate(e[2])]
                heapq.heapify(self._heap)
                for _, _, j in gone:
                    self._by_id.pop(j.request.id, None)
            return [j for _, _, j in gone]

    def get(self, timeout: float) -> Job | None:
        """The next job, or None after timeout."""
        with self._cond:
            if not self._heap and not self._cond.wait_for(lambda: self._heap, timeout):
                return None
            _, _, job = heapq.heappop(self._heap)
            self._by_id.pop(job.request.id, None)
            return job

    def find(self, request_id: str) -> Job | None:
        with self._cond:
            return self._by_id.get(request_id)

    def drain(self) -> list[Job]:
        """Remove and return every waiting job (shutdown)."""
        with self._cond:
            jobs = [j for _, _, j in sorted(self._heap, key=lambda e: (e[0], e[1]))]
            self._heap.clear()
            self._by_id.clear()
            return jobs
