"""The context a model loads with when model.n_ctx is auto: its training length (at most
policy.AUTO_CTX_MAX) as far as the memory free now allows, by the KV cache's size per token."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import structlog

from daemon.governor import boards
from daemon.governor.memory import headroom as memory_headroom
from daemon.governor.policy import kv_bytes_per_token, start_context

log = structlog.get_logger(__name__)


def auto_context(
    metadata: Mapping[str, str],
    n_ctx_train: int,
    kv_type: str = "f16",
    sysfs_root: Path = Path("/"),
) -> int:
    """The start context for this model on this machine now (memory unknown: the cap)."""
    try:
        kv = kv_bytes_per_token(metadata, kv_type, kv_type)
    except ValueError:
        kv = 0
    headroom = memory_headroom(sysfs_root)
    margin = boards.detect(sysfs_root).mem_margin_bytes
    n_ctx = start_context(n_ctx_train, kv, headroom, margin)
    log.info(
        "context_auto",
        n_ctx=n_ctx,
        n_ctx_train=n_ctx_train,
        kv_bytes_per_token=kv,
        headroom_mib=None if headroom is None else headroom >> 20,
    )
    return n_ctx
