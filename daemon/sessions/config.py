"""The `sessions:` config section."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from daemon.config_base import Section


class SessionsConfig(Section):
    """Conversations kept on the node (docs/PROTOCOL.md, Sessions)."""

    enabled: bool = Field(True, description="Accept the session field; off: such requests fail.")
    max_sessions: int = Field(
        64, ge=1, le=100_000, description="Sessions kept; the least recently used goes first."
    )
    max_turns: int = Field(
        20, ge=2, le=1000, description="Messages kept per session; the oldest go first."
    )
    max_tokens: int | None = Field(
        None,
        ge=64,
        description="Most prompt tokens a session's history may take (None: what the context "
        "allows after the reply's room). The oldest turns are dropped to fit.",
    )
    idle_s: float = Field(
        3600.0, ge=10, le=30 * 86400, description="A session unused this long is forgotten."
    )
    kv_budget_mb: int = Field(
        256,
        ge=0,
        le=65536,
        description="Memory for saved KV states of sessions and of stateless clients' long "
        "prefixes not in the live context (0: none saved; a follow-up then re-evaluates its "
        "history). Home Assistant's 5k-token prefix takes about 115 MB with SmolLM2-135M. The "
        "governor lowers it when memory is short.",
    )
    persist: Path | None = Field(
        None,
        description="SQLite file that keeps the sessions' turns across restarts (None: memory "
        "only). KV states are not kept: a session's first turn after a restart is evaluated "
        "afresh.",
    )
