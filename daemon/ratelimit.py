"""Per-client rate limits: a token bucket on requests and one on generated tokens."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from daemon.config import RateLimitConfig


@dataclass
class _Buckets:
    requests: float
    tokens: float
    at: float


class RateLimiter:
    """Admits a client's request while both of its buckets allow; pure apart from the clock.

    Called from the MQTT network thread (admit) and the engine thread (charge_tokens): a lock.
    At most max_clients buckets are kept, the least recently used dropped first: a dropped
    client comes back with full buckets, which is what an idle client would have by then
    anyway, so eviction only ever forgives a client that stayed away.
    """

    def __init__(
        self,
        cfg: RateLimitConfig,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 1024,
    ):
        self._cfg = cfg
        self._clock = clock
        self._max = max_clients
        self._clients: OrderedDict[str, _Buckets] = OrderedDict()
        self._lock = threading.Lock()

    def reconfigure(self, cfg: RateLimitConfig) -> None:
        """New limits (a reload); the buckets keep what they hold, capped to the new sizes."""
        with self._lock:
            self._cfg = cfg

    def admit(self, client: str) -> float | None:
        """Take one request from client's bucket: None if admitted, else seconds to wait."""
        cfg = self._cfg
        with self._lock:
            b = self._refilled(client)
            waits = []
            if cfg.requests_per_min is not None and b.requests < 1:
                waits.append((1 - b.requests) * 60 / cfg.requests_per_min)
            if cfg.tokens_per_min is not None and b.tokens <= 0:
                waits.append((1 - b.tokens) * 60 / cfg.tokens_per_min)
            if waits:
                return max(waits)
            if cfg.requests_per_min is not None:
                b.requests -= 1
            return None

    def charge_tokens(self, client: str, n: int) -> None:
        """Count n generated tokens against client (the bucket may go below zero)."""
        if self._cfg.tokens_per_min is None or n <= 0:
            return
        with self._lock:
            self._refilled(client).tokens -= n

    def _refilled(self, client: str) -> _Buckets:
        cfg, now = self._cfg, self._clock()
        b = self._clients.get(client)
        if b is None:
            b = _Buckets(float(cfg.burst), float(cfg.tokens_per_min or 0), now)
            self._clients[client] = b
            while len(self._clients) > self._max:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
            elapsed = now - b.at
            if cfg.requests_per_min is not None:
                b.requests = min(cfg.burst, b.requests + elapsed * cfg.requests_per_min / 60)
            if cfg.tokens_per_min is not None:
                b.tokens = min(cfg.tokens_per_min, b.tokens + elapsed * cfg.tokens_per_min / 60)
            b.at = now
        return b
