"""The turns of each session, bounded by count, idle time and the number of sessions.

Any thread may call it (front doors reset, the engine reads and appends); one lock guards it.
Sessions are keyed by (client, id): under the shipped broker ACL the client is the MQTT user
name, so one user cannot read or reset another's conversation by guessing its id.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import structlog

from daemon.requests import ChatMessage
from daemon.sessions.config import SessionsConfig

log = structlog.get_logger(__name__)


class SessionKey(NamedTuple):
    client: str
    id: str


@dataclass(frozen=True)
class Session:
    turns: tuple[ChatMessage, ...]
    used_at: float  # wall-clock seconds: idle expiry holds across a restart


class Backing(Protocol):
    """Where sessions are kept beyond this process (sessions/persist.py)."""

    def load(self) -> dict[SessionKey, Session]: ...

    def put(self, key: SessionKey, session: Session) -> None: ...

    def delete(self, keys: Sequence[SessionKey]) -> None: ...


def drop_oldest(turns: Sequence[ChatMessage], n: int) -> tuple[ChatMessage, ...]:
    """The turns without the oldest n, and without any that would then lead the history but
    not be a user turn (a history starts with what someone said, not a dangling reply)."""
    kept = list(turns[n:])
    while kept and kept[0].role != "user":
        kept.pop(0)
    return tuple(kept)


class SessionStore:
    """The sessions of one node, least recently used first."""

    def __init__(
        self,
        cfg: SessionsConfig,
        backing: Backing | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.cfg = cfg
        self._backing = backing
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[SessionKey, Session] = OrderedDict()
        if backing is not None:
            loaded = sorted(backing.load().items(), key=lambda kv: kv[1].used_at)
            self._sessions.update(loaded)
            self.expire()
            log.info("sessions_loaded", sessions=len(self._sessions))

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def reconfigure(self, cfg: SessionsConfig) -> None:
        """A reload: new bounds apply from the next turn (and expiry) on."""
        self.cfg = cfg

    def turns(self, key: SessionKey) -> tuple[ChatMessage, ...]:
        """The session's turns, oldest first; () for a new, expired or reset one."""
        self.expire()
        with self._lock:
            session = self._sessions.get(key)
            return session.turns if session is not None else ()

    def add(
        self,
        key: SessionKey,
        new: Sequence[ChatMessage],
        reply: str | ChatMessage,
        dropped: int = 0,
    ) -> tuple[ChatMessage, ...]:
        """Record a finished exchange: the new turns and the reply after the history, less the
        dropped oldest ones (what the engine left out to fit the context); the turns kept."""
        with self._lock:
            old = self._sessions.pop(key, None)
            history = drop_oldest(old.turns, dropped) if old is not None else ()
            if isinstance(reply, str):
                reply = ChatMessage("assistant", reply)
            turns = (*history, *new, reply)
            if len(turns) > self.cfg.max_turns:
                turns = drop_oldest(turns, len(turns) - self.cfg.max_turns)
            session = Session(turns, self._clock())
            self._sessions[key] = session
            evicted = []
            while len(self._sessions) > self.cfg.max_sessions:
                evicted.append(self._sessions.popitem(last=False)[0])
        if self._backing is not None:
            self._backing.put(key, session)
            if evicted:
                self._backing.delete(evicted)
        return turns

    def reset(self, key: SessionKey) -> bool:
        """Forget a session; whether there was one."""
        with self._lock:
            found = self._sessions.pop(key, None) is not None
        if found and self._backing is not None:
            self._backing.delete([key])
        return found

    def expire(self) -> list[SessionKey]:
        """Forget the sessions idle longer than idle_s; their keys."""
        cutoff = self._clock() - self.cfg.idle_s
        with self._lock:
            gone = [k for k, s in self._sessions.items() if s.used_at < cutoff]
            for key in gone:
                del self._sessions[key]
        if gone and self._backing is not None:
            self._backing.delete(gone)
        return gone
