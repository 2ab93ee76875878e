"""Per-client token buckets on requests and on generated tokens, on a fake clock."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config import RateLimitConfig
from daemon.safeguards.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limiter(**kw: float | None) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(RateLimitConfig(**kw), clock), clock  # type: ignore[arg-type]


def test_a_burst_is_admitted_then_the_sustained_rate():
    rl, clock = limiter(requests_per_min=60, burst=3, tokens_per_min=None)
    assert [rl.admit("a") for _ in range(3)] == [None, None, None]
    assert rl.admit("a") == pytest.approx(1.0)  # one request a second
    clock.now += 0.5
    assert rl.admit("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert rl.admit("a") is None
    assert rl.admit("a") == pytest.approx(1.0)


def test_an_idle_client_refills_only_up_to_the_burst():
    rl, clock = limiter(requests_per_min=60, burst=2, tokens_per_min=None)
    assert rl.admit("a") is None
    clock.now += 3600
    assert [rl.admit("a") is None for _ in range(3)] == [True, True, False]


def test_clients_have_their_own_buckets():
    rl, _ = limiter(requests_per_min=6, burst=1, tokens_per_min=None)
    assert rl.admit("alice") is None
    assert rl.admit("alice") == pytest.approx(10.0)
    assert rl.admit("bob") is None
    assert rl.admit("") is None  # the unnamed client of the plain request topic is one more


def test_generated_tokens_are_charged_and_block_until_refilled():
    rl, clock = limiter(requests_per_min=None, tokens_per_min=600)
    assert rl.admit("a") is None
    rl.charge_tokens("a", 599)
    assert rl.admit("a") is None  # one token left: a request may still start
    rl.charge_tokens("a", 61)  # 60 below zero: 6 s at 10 tokens/s, plus one token
    assert rl.admit("a") == pytest.approx(6.1)
    clock.now += 6.0
    assert rl.admit("a") == pytest.approx(0.1)  # at zero: empty still refuses
    clock.now += 0.1
    assert rl.admit("a") is None
    assert rl.admit("b") is None  # bob's bucket was never charged


def test_the_longer_of_the_two_waits_is_given():
    rl, _ = limiter(requests_per_min=60, burst=1, tokens_per_min=60)
    assert rl.admit("a") is None
    rl.charge_tokens("a", 120)  # 60 below zero at one token a second
    assert rl.admit("a") == pytest.approx(61.0)


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
    assert rl.admit("d") is None  # evicts b, the least recent
    assert len(rl) == 3
    assert rl.admit("b") is None  # b comes back with a full bucket (and evicts c)
    assert rl.admit("a") is not None  # a was kept, still empty
    for n in range(100):
        rl.admit(f"flood{n}")
    assert len(rl) == 3


def test_long_client_names_take_bounded_memory_and_stay_apart():
    rl, _ = limiter(requests_per_min=6, burst=1, tokens_per_min=None)
    long_a, long_b = "a" * 60000, "a" * 59999 + "b"
    assert rl.admit(long_a) is None
    assert rl.admit(long_b) is None
    assert rl.admit(long_a) is not None
    assert max(len(k) for k in rl._clients) <= 64


def test_max_clients_must_be_positive():
    with pytest.raises(ValueError, match="max_clients"):
        RateLimiter(RateLimitConfig(), max_clients=0)


def test_reconfigure_applies_new_rates_and_keeps_the_buckets():
    rl, clock = limiter(requests_per_min=60, burst=1, tokens_per_min=None)
    assert rl.admit("a") is None
    rl.reconfigure(RateLimitConfig(requests_per_min=600, burst=1, tokens_per_min=None))
    assert rl.admit("a") == pytest.approx(0.1)  # still empty, refilling ten times as fast
    clock.now += 0.1
    assert rl.admit("a") is None


def test_a_smaller_burst_caps_what_a_bucket_holds():
    rl, _ = limiter(requests_per_min=60, burst=10, tokens_per_min=None)
    assert rl.admit("a") is None
    rl.reconfigure(RateLimitConfig(requests_per_min=60, burst=2, tokens_per_min=None))
    assert [rl.admit("a") is None for _ in range(3)] == [True, True, False]


def test_a_limit_turned_on_starts_clients_full():
    """A client seen while a kind had no limit must not start that limit empty."""
    rl, _ = limiter(requests_per_min=None, tokens_per_min=None)
    for _ in range(50):
        assert rl.admit("a") is None
    rl.charge_tokens("a", 10**6)
    rl.reconfigure(RateLimitConfig(requests_per_min=60, burst=2, tokens_per_min=100))
    assert [rl.admit("a") is None for _ in range(3)] == [True, True, False]
    rl.charge_tokens("a", 100)
    assert rl.admit("a") is not None


def test_concurrent_admits_never_exceed_the_burst():
    rl, _ = limiter(requests_per_min=1, burst=50, tokens_per_min=None)
    admitted = []

    def worker() -> None:
        admitted.extend(rl.admit("a") is None for _ in range(100))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 50


steps = st.lists(
    st.tuples(st.floats(0, 5), st.sampled_from(["a", "b"]), st.integers(0, 300)), max_size=80
)


@given(steps, st.integers(1, 5), st.floats(1, 120))
def test_admitted_requests_never_exceed_burst_plus_rate(steps, burst, per_min):
    clock = Clock()
    rl = RateLimiter(RateLimitConfig(requests_per_min=per_min, burst=burst), clock)
    admitted = {"a": 0, "b": 0}
    for dt, client, tokens in steps:
        clock.now += dt
        if rl.admit(client) is None:
            admitted[client] += 1
            rl.charge_tokens(client, tokens)
        for n in admitted.values():
            assert n <= burst + clock.now * per_min / 60 + 1e-6


@given(steps, st.integers(1, 5), st.integers(1, 600))
def test_waiting_retry_after_s_is_enough(steps, burst, tokens_per_min):
    clock = Clock()
    cfg = RateLimitConfig(requests_per_min=30, burst=burst, tokens_per_min=tokens_per_min)
    rl = RateLimiter(cfg, clock)
    for dt, client, tokens in steps:
        clock.now += dt
        wait = rl.admit(client)
        if wait is not None:
            assert wait > 0
            clock.now += wait + 1e-6
            assert rl.admit(client) is None
        rl.charge_tokens(client, tokens)
