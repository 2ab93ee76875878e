"""Per-client token buckets on requests and on generated tokens."""

from __future__ import annotations

import pytest

from daemon.config import RateLimitConfig
from daemon.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limiter(**kw) -> tuple[RateLimiter, Clock]:  # type: ignore[no-untyped-def]
    clock = Clock()
    return RateLimiter(RateLimitConfig(**kw), clock), clock


def test_a_burst_is_admitted_then_the_sustained_rate():
    rl, clock = limiter(requests_per_min=60, burst=3, tokens_per_min=None)
    assert [rl.admit("a") for _ in range(3)] == [None, None, None]
    wait = rl.admit("a")
    assert wait == pytest.approx(1.0)  # one request a second
    clock.now += 1.0
    assert rl.admit("a") is None
    assert rl.admit("a") == pytest.approx(1.0)


def test_clients_have_their_own_buckets():
    rl, _ = limiter(requests_per_min=6, burst=1, tokens_per_min=None)
    assert rl.admit("alice") is None
    assert rl.admit("alice") == pytest.approx(10.0)
    assert rl.admit("bob") is None


def test_generated_tokens_are_charged_and_block_until_refilled():
    rl, clock = limiter(requests_per_min=None, tokens_per_min=600)
    assert rl.admit("a") is None
    rl.charge_tokens("a", 660)  # 60 over: 6 s at 10 tokens/s, plus one token
    wait = rl.admit("a")
    assert wait == pytest.approx(6.1)
    clock.now += 6.2
    assert rl.admit("a") is None


def test_none_means_no_limit():
    rl, _ = limiter(requests_per_min=None, tokens_per_min=None)
    for _ in range(1000):
        assert rl.admit("a") is None
    rl.charge_tokens("a", 10**9)
    assert rl.admit("a") is None


def test_a_refused_request_takes_nothing_from_the_bucket():
    rl, clock = limiter(requests_per_min=60, burst=1, tokens_per_min=None)
    assert rl.admit("a") is None
    for _ in range(5):
        assert rl.admit("a") is not None
    clock.now += 1.0
    assert rl.admit("a") is None


def test_buckets_are_bounded_and_evict_the_least_recently_seen():
    clock = Clock()
    rl = RateLimiter(RateLimitConfig(requests_per_min=1, burst=1), clock, max_clients=3)
    for c in ("a", "b", "c"):
        assert rl.admit(c) is None
    assert rl.admit("a") is not None  # a is now the most recent
    assert rl.admit("d") is None  # evicts b
    assert rl.admit("b") is None  # b comes back with a full bucket
    assert rl.admit("a") is not None


def test_reconfigure_applies_new_rates():
    rl, clock = limiter(requests_per_min=60, burst=1, tokens_per_min=None)
    assert rl.admit("a") is None
    rl.reconfigure(RateLimitConfig(requests_per_min=600, burst=1, tokens_per_min=None))
    clock.now += 0.1
    assert rl.admit("a") is None
