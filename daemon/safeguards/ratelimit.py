"""Per-client rate limits: a token bucket on requests and one on generated tokens."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from daemon.config import RateLimitConfig

# A client name is a topic level, up to 64 KiB long: longer names are kept as a digest, so
# max_clients buckets take bounded memory whatever the names. The digest starts with '#', which no
# topic level can contain, so it never equals a short name.
_MAX_KEY_CHARS = 64


@dataclass
class _Buckets:
    # math.inf while that kind has no limit: a limit set later (a reload) then caps it to full.
    requests: float
    tokens: float
    at: float


class RateLimiter:
    """Admits a client's request while both of its buckets allow; pure apart from the clock.

    Called from the MQTT network thread (admit) and the engine thread (charge_tokens): a lock.
    """

    def __init__(
        self,
        cfg: RateLimitConfig,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 1024,
    ):
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self._cfg = cfg
        self._clock = clock
        self._max = max_clients
        self._clients: OrderedDict[str, _Buckets] = OrderedDict()
        self._lock = threading.Lock()

    def reconfigure(self, cfg: RateLimitConfig) -> None:
        """New limits (a reload); buckets keep what they hold, capped to the new sizes."""
        with self._lock:
            self._cfg = cfg

    def admit(self, client: str) -> float | None:
        """Take one request from client's bucket: None if admitted, else seconds to wait (> 0)."""
        with self._lock:
            cfg = self._cfg
            b = self._refilled(client)
            waits = []
            if cfg.requests_per_min is not None and b.requests < 1:
                waits.append((1 - b.requests) * 60 / cfg.requests_per_min)
            if cfg.tokens_per_min is not None and b.tokens <= 0:
                # Admitted again once the bucket is positive; wait for one whole token.
                waits.append((1 - b.tokens) * 60 / cfg.tokens_per_min)
            if waits:
                # A refused request takes nothing: a client that retries too early only waits.
                return max(waits)
            b.requests -= 1
            return None

    def charge_tokens(self, client: str, n: int) -> None:
        """Count n generated tokens against client (the bucket may go below zero)."""
        if n <= 0:
            return
        with self._lock:
            self._refilled(client).tokens -= n

    def __len__(self) -> int:
        """How many clients have buckets now (at most max_clients)."""
        with self._lock:
            return len(self._clients)

    def _refilled(self, client: str) -> _Buckets:
        cfg, now = self._cfg, self._clock()
        key = _key(client)
        b = self._clients.get(key)
        if b is None:
            b = _Buckets(math.inf, math.inf, now)
            self._clients[key] = b
            # Least recently used first. A client seen again after eviction starts with full
            # buckets, exactly what it would have had after staying away long enough to be the
            # least recent: eviction forgives nothing a new name would not also get (and a name is
            # only as hard to change as the broker's ACL makes it).
            while len(self._clients) > self._max:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(key)
        elapsed = max(0.0, now - b.at)
        b.at = now
        b.requests = _refill(b.requests, cfg.burst, cfg.requests_per_min, elapsed)
        b.tokens = _refill(b.tokens, cfg.tokens_per_min, cfg.tokens_per_min, elapsed)
        return b


def _refill(level: float, capacity: float | None, per_min: float | None, elapsed: float) -> float:
    if per_min is None or capacity is None:
        return math.inf
    return min(float(capacity), level + elapsed * per_min / 60)


def _key(client: str) -> str:
    if len(client) <= _MAX_KEY_CHARS:
        return client
    return (
        "#" + hashlib.blake2b(client.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    )
