"""Saved KV states of sessions not in the live context, within a memory budget.

The live context holds one conversation; a follow-up to it pays only for its new tokens
(generate() reuses the common prefix). When a request of another session (or none) is about to
overwrite it, its KV cells are copied out first (llama.cpp's sequence state), and put back when
that session speaks again, so its history is not evaluated again. Least recently used states
go first when the budget (sessions.kv_budget_mb, lowered by the governor) is exceeded.

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
        live context if it holds another session, restore this session's saved state if it
        shares more with the prompt than the live context does. The tokens restored (0: none)."""
        self._take_forgets()
        cached = llama_compat.cached_tokens(llm)
        live_shared = common_length(cached, tokens)
        if self._live is not None and self._live != key and live_shared < len(cached):
            self._save(llm, self._live)
        self._live = key
        restored = 0
        saved = self._pop(key) if key is not None else None
        if saved is not None and common_length(saved.tokens, tokens) > live_shared:
            if llama_compat.restore_sequence(llm, saved.buf, saved.tokens):
                restored = len(saved.tokens)
            else:
                log.warning("kv_restore_failed", tokens=len(saved.tokens))
        self._fit(self.budget_bytes)
        return restored

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
