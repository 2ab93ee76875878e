"""Sessions kept in a local SQLite file, so a restart does not forget them (sessions.persist).

The file holds conversation text: it is created readable by its owner only, and it is off by
default (prompts are private). One connection, used under a lock by whichever thread writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.requests import ChatMessage, ToolCall
from daemon.sessions.store import Session, SessionKey

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    client TEXT NOT NULL,
    id TEXT NOT NULL,
    turns TEXT NOT NULL,
    used_at REAL NOT NULL,
    PRIMARY KEY (client, id)
)
"""


class SqliteSessions:
    """The store's Backing on a SQLite file (WAL: a write is one append, no fsync per turn)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Create it private before SQLite opens it: conversations are nobody else's.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def load(self) -> dict[SessionKey, Session]:
        with self._lock:
            rows = self._db.execute("SELECT client, id, turns, used_at FROM sessions").fetchall()
        out = {}
        for client, sid, turns, used_at in rows:
            try:
                messages = tuple(_message(t) for t in json.loads(turns))
            except (ValueError, KeyError, TypeError):
                continue  # a row this version cannot read is skipped, not fatal
            out[SessionKey(client, sid)] = Session(messages, float(used_at))
        return out

    def put(self, key: SessionKey, session: Session) -> None:
        turns = json.dumps([_row(t) for t in session.turns])
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sessions (client, id, turns, used_at) VALUES (?, ?, ?, ?)",
                (key.client, key.id, turns, session.used_at),
            )

    def delete(self, keys: Sequence[SessionKey]) -> None:
        with self._lock:
            self._db.executemany(
                "DELETE FROM sessions WHERE client = ? AND id = ?", [tuple(k) for k in keys]
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row(m: ChatMessage) -> dict[str, Any]:
    row: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        row["tool_calls"] = [[c.id, c.name, c.arguments] for c in m.tool_calls]
    if m.tool_call_id is not None:
        row["tool_call_id"] = m.tool_call_id
    return row


def _message(row: dict[str, Any]) -> ChatMessage:
    calls = tuple(ToolCall(i, n, dict(a)) for i, n, a in row.get("tool_calls", ()))
    return ChatMessage(row["role"], row["content"], calls, row.get("tool_call_id"))
