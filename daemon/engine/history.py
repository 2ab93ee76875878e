"""A session's stored turns put before a request's new ones, fitted to the context.

The oldest turns go first when the prompt would not leave the reply its room (or would pass
sessions.max_tokens); the system prompt is never dropped: it is not a turn, it is composed anew
for each request (prompt.py). The exchange is recorded only when it ends in `done`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.engine import kvstates, llama_compat
from daemon.engine.kvstates import KvStates
from daemon.engine.prompt import Prompter, Refused
from daemon.engine.tools import offered
from daemon.requests import ChatMessage, ErrorCode, Request
from daemon.sessions.config import SessionsConfig
from daemon.sessions.store import SessionKey, SessionStore, drop_oldest

# The most tokens prime() evaluates after a reply (the worker is not free meanwhile).
_PRIME_MAX = 64
# How long the worker waits with no job before it primes a session's next prompt.
PRIME_AFTER_S = 0.1


@dataclass(frozen=True)
class Fitted:
    """A session request's prompt: its tokens and what the store records afterwards."""

    key: SessionKey
    tokens: list[int]
    new: tuple[ChatMessage, ...]  # the request's own turns (no system message)
    history: int  # stored messages used
    dropped: int  # oldest stored messages left out to fit


def new_turns(req: Request) -> tuple[str | None, tuple[ChatMessage, ...]]:
    """(system, the turns this request adds): a leading system message is the system text."""
    if req.messages is None:
        assert req.prompt is not None
        return req.system, (ChatMessage("user", req.prompt),)
    if req.messages[0].role == "system":
        return req.messages[0].content, req.messages[1:]
    return req.system, req.messages


def fit(req: Request, store: SessionStore, prompter: Prompter, n_ctx: int, max_new: int) -> Fitted:
    """The prompt tokens of a session request: history and new turns, oldest dropped to fit."""
    assert req.session is not None
    if not store.cfg.enabled:
        raise Refused(ErrorCode.BAD_REQUEST, "sessions are off on this node (sessions.enabled)")
    if not prompter.chat:
        raise Refused(ErrorCode.BAD_REQUEST, "sessions need a chat model; this one completes text")
    key = SessionKey(req.client, req.session)
    system, new = new_turns(req)
    if not new:
        raise Refused(ErrorCode.BAD_REQUEST, "messages: a session request needs a new turn")
    stored = store.turns(key)
    # The reply's room: what it may have, but never more than a quarter of the context, so a
    # large max_tokens does not cost a conversation its history.
    cap = n_ctx - min(max_new, n_ctx // 4)
    if store.cfg.max_tokens is not None:
        cap = min(cap, store.cfg.max_tokens)
    history = stored
    while True:
        tokens = prompter.encode(None, (*history, *new), system)
        if len(tokens) <= cap or not history:
            break
        history = drop_oldest(history, 2 if len(history) > 1 else 1)
    return Fitted(key, tokens, new, len(history), len(stored) - len(history))


def record(store: SessionStore, fitted: Fitted, reply: ChatMessage) -> tuple[ChatMessage, ...]:
    """Add the finished exchange to the session; the turns it now holds."""
    return store.add(fitted.key, fitted.new, reply, fitted.dropped)


def prime(llm: Any, prompter: Prompter, req: Request, turns: tuple[ChatMessage, ...]) -> int:
    """After a session's turn (its reply sent): evaluate what its next prompt will surely start
    with (the end of the reply's turn, the next user turn's header), so the follow-up pays only
    for its own words. That part is found without knowing the template: the common prefix of
    the prompts for two different next questions, less its last token (which may merge with the
    question's first). Only a short tail: a longer one (turns dropped) waits for the follow-up.
    The tokens evaluated."""
    system, _ = new_turns(req)
    with prompter.offering(offered(req)):  # the tools this conversation is given, if any
        a = prompter.encode(None, (*turns, ChatMessage("user", "a")), system)
        b = prompter.encode(None, (*turns, ChatMessage("user", "b")), system)
    stable = a[: kvstates.common_length(a, b) - 1]
    keep = kvstates.common_length(llama_compat.cached_tokens(llm), stable)
    tail = stable[keep:]
    if not tail or len(tail) > _PRIME_MAX or len(stable) >= llm.n_ctx():
        return 0
    llm.n_tokens = keep  # eval() drops the cells after it (a reply tokenized another way)
    llm.eval(tail)
    return len(tail)


class SessionMemory:
    """What the engine keeps of conversations: the turns (the store; None with sessions off)
    and the saved KV states. The service builds it; other threads may reset a session."""

    def __init__(self, store: SessionStore | None, kv: KvStates):
        self.store = store
        self.kv = kv
        # The turn whose follow-up to prime when the worker is idle (the worker thread's).
        self._after: tuple[Request, tuple[ChatMessage, ...]] | None = None

    @property
    def priming(self) -> bool:
        return self._after is not None

    def after_turn(self, req: Request | None, turns: tuple[ChatMessage, ...] = ()) -> None:
        """A session turn ended (or, with None, another job starts): what to prime, if idle."""
        self._after = (req, turns) if req is not None else None

    def prime(self, llm: Any, prompter: Prompter | None) -> int:
        """Prime the last session turn's follow-up (prime()); the tokens evaluated."""
        after, self._after = self._after, None
        if after is None or prompter is None:
            return 0
        return prime(llm, prompter, *after)

    def reset(self, key: SessionKey) -> bool:
        """Forget a session's turns and its saved KV state; whether it had turns."""
        self.kv.forget(key)
        return self.store.reset(key) if self.store is not None else False

    def expire(self) -> None:
        """Forget the sessions idle past sessions.idle_s, and their saved KV states."""
        for key in self.store.expire() if self.store is not None else ():
            self.kv.forget(key)


def make_memory(cfg: SessionsConfig) -> SessionMemory:
    """The node's session memory: turns in memory (or in the SQLite file sessions.persist
    names) and a KV state budget of sessions.kv_budget_mb."""
    from daemon.sessions.persist import SqliteSessions

    backing = SqliteSessions(cfg.persist) if cfg.persist is not None else None
    return SessionMemory(SessionStore(cfg, backing), KvStates(cfg.kv_budget_mb * 1024 * 1024))
