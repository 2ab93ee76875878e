"""Saved KV states of conversations not in the live context, within a memory budget.

The live context holds one conversation; a follow-up to it pays only for its new tokens
(generate() reuses the common prefix). When a request of another session (or none) is about to
overwrite it, its KV cells are copied out first (llama.cpp's sequence state), and put back when
that session speaks again, so its history is not evaluated again. Least recently used states
go first when the budget (sessions.kv_budget_mb, lowered by the governor) is exceeded.

Stateless clients get the same: a live context of no session that a request would cut by at
least PREFIX_MIN tokens is saved under its first tokens, and any later request that shares more
of a saved prefix than of the live context starts from it. Home Assistant resends its system
prompt and tools (~4.5k tokens) with every call; an MQTT prompt or a thread-sweep slice in
between would otherwise cost its next call the whole prefix again.

Only the engine's worker thread saves and restores; other threads only set the budget or ask
for a session's state to be forgotten (a reset).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import structlog

from daemon.engine import llama_compat

log = structlog.get_logger(__name__)

# A live context shorter than this is cheaper to evaluate again than to keep.
MIN_TOKENS = 16
# A context of no session is kept only when a request would drop at least this many of its
# tokens (about a second of prefill on a Pi 5), and restored only for a gain this large.
PREFIX_MIN = 256
# The tokens that name a prefix kept for stateless clients: two conversations that share them
# (one system prompt and tool set) share one saved state, the newer.
_PREFIX_KEY = 64


@dataclass(frozen=True)
class PrefixKey:
    """The key of a stateless client's saved context: a hash of its first tokens."""

    head: int


def _prefix_key(cached: Any) -> PrefixKey:
    return PrefixKey(hash(tuple(int(t) for t in cached[:_PREFIX_KEY])))


def common_length(a: Any, b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class _Saved:
    buf: Any
    tokens: list[int]

    @property
    def nbytes(self) -> int:
        return len(self.buf)


class KvStates:
    """The live context's owner and the saved states of the others."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes  # any thread may lower or raise it
        self._saved: OrderedDict[Hashable, _Saved] = OrderedDict()
        self._live: Hashable | None = None  # the session the live context holds, if any
        self._forget: set[Hashable] = set()
        self.nbytes = 0  # what the saved states hold (the governor reads it from its thread)
        self._lock = threading.Lock()

    def forget(self, key: Hashable) -> None:
        """Drop a session's state (it was reset); done at the worker's next job."""
        with self._lock:
            self._forget.add(key)

    def clear(self) -> None:
        """The context was rebuilt or reset: nothing live, nothing saved (sizes changed)."""
        self._saved.clear()
        self._live = None
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._saved)

    def prepare(self, llm: Any, key: Hashable | None, tokens: list[int]) -> int:
        """Before a job of session `key` (None: no session) with these prompt tokens: save the
        live context if the job would overwrite what is worth keeping, then restore the saved
        state that shares the most with the prompt if it shares more than the live context
        does. The tokens restored (0: none)."""
        self._take_forgets()
        cached = llama_compat.cached_tokens(llm)
        live_shared = common_length(cached, tokens)
        if live_shared < len(cached):
            if self._live is not None and self._live != key:
                self._save(llm, self._live)
            elif self._live is None and len(cached) - live_shared >= PREFIX_MIN:
                self._save(llm, _prefix_key(cached))
        self._live = key
        restored = 0
        best_key, shared = self._best(key, tokens)
        if best_key is not None and shared > live_shared + (0 if key is not None else PREFIX_MIN):
            saved = self._saved[best_key]
            if best_key == key:
                self._pop(key)  # the session's own state goes live; it is saved again later
            else:
                self._saved.move_to_end(best_key)
            if llama_compat.restore_sequence(llm, saved.buf, saved.tokens):
                restored = len(saved.tokens)
            else:
                log.warning("kv_restore_failed", tokens=len(saved.tokens))
        self._fit(self.budget_bytes)
        return restored

    def _best(self, key: Hashable | None, tokens: list[int]) -> tuple[Hashable | None, int]:
        """The saved state to start this job from: the session's own, or the stateless prefix
        that shares the most with its prompt; and how many tokens it shares."""
        best: tuple[Hashable | None, int] = (None, 0)
        for k, saved in self._saved.items():
            if k != key and not isinstance(k, PrefixKey):
                continue  # another session's: never reused by this one
            n = common_length(saved.tokens, tokens)
            if n > best[1] or (n == best[1] and k == key):
                best = (k, n)
        return best

    def _take_forgets(self) -> None:
        with self._lock:
            keys, self._forget = self._forget, set()
        for key in keys:
            self._pop(key)
            if self._live == key:
                self._live = None

    def _save(self, llm: Any, key: Hashable) -> None:
        if llm.n_tokens < MIN_TOKENS or self.budget_bytes <= 0:
            return
        buf, tokens = llama_compat.save_sequence(llm)
        if len(buf) > self.budget_bytes:
            return
        self._pop(key)
        self._saved[key] = _Saved(buf, tokens)
        self.nbytes += len(buf)

    def _pop(self, key: Hashable) -> _Saved | None:
        saved = self._saved.pop(key, None)
        if saved is not None:
            self.nbytes -= saved.nbytes
        return saved

    def _fit(self, budget: int) -> None:
        """Drop the least recently used states until they fit the budget."""
        while self._saved and self.nbytes > budget:
            _key, gone = self._saved.popitem(last=False)
            self.nbytes -= gone.nbytes
