"""Duplicates cost nothing: a request id seen again within a window runs the model once.

A QoS 1 redelivery (the broker resends a PUBLISH whose PUBACK it missed) or a client's retry
arrives with the same id. While the first is waiting or running, the copy is dropped: the first
one's terminal reply goes to the same reply address. Once it has finished, the copy gets the
same terminal reply again, sent to the copy's own reply address. Keys are (client, id), so one
client's id never returns another client's reply.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

Key = tuple[str, str]  # (client, request id)

# Remembered replies are bounded by count and by bytes; the oldest go first. The count matters
# more than the bytes: the soak's RSS stepped up ~35 MiB while 4,096 entries filled (each
# entry's few small objects, made between one request's garbage and the next's, keep Python's
# allocator arenas from being given back), and stayed flat with 150 (docs/BENCHMARKS.md, issue
# 18). 1,024 is 35 s of replies at the soak's 29 requests/s, hours at a home's pace.
MAX_ENTRIES = 1024
MAX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Seen:
    """What is known of an id: still in flight (payload None) or its terminal reply."""

    payload: bytes | None


class RecentRequests:
    """The ids accepted within the window and, once finished, their terminal reply payloads."""

    def __init__(
        self,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
    ):
        self.window_s = window_s
        self._clock = clock
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        # key -> (time accepted or finished, payload or None while in flight)
        self._entries: OrderedDict[Key, tuple[float, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def check(self, key: Key) -> Seen | None:
        """What is known of key within the window, or None (a new request)."""
        with self._lock:
            self._expire()
            entry = self._entries.get(key)
            return None if entry is None else Seen(entry[1])

    def begin(self, key: Key) -> None:
        """Key was accepted (queued); copies are dropped until it finishes."""
        if self.window_s <= 0:
            return
        with self._lock:
            self._drop(key)
            self._entries[key] = (self._clock(), None)
            self._trim()

    def forget(self, key: Key) -> None:
        """Key was not accepted after all (busy, rate limited): a retry must run."""
        with self._lock:
            self._drop(key)

    def finish(self, key: Key, payload: bytes) -> None:
        """Key's terminal reply, kept for copies within the window; ignored if not in flight."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[1] is not None:
                return
            self._drop(key)
            self._entries[key] = (self._clock(), payload)
            self._bytes += len(payload)
            self._trim()

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry[1] is not None:
            self._bytes -= len(entry[1])

    def _trim(self) -> None:
        while self._entries and (
            len(self._entries) > self._max_entries or self._bytes > self._max_bytes
        ):
            self._drop(next(iter(self._entries)))

    def _expire(self) -> None:
        # Entries are in time order (re-inserted on each change), so the oldest come first.
        # An in-flight entry outlives the window: it is still running.
        cutoff = self._clock() - self.window_s
        for key, (at, payload) in list(self._entries.items()):
            if at >= cutoff:
                break
            if payload is not None:
                self._drop(key)
