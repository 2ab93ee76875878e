"""Duplicates cost nothing: the window of recent request ids and their terminal replies."""

from __future__ import annotations

from daemon.safeguards.dedupe import RecentRequests


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_copy_in_flight_is_seen_then_gets_the_terminal_reply():
    clock = Clock()
    recent = RecentRequests(60, clock)
    key = ("alice", "q1")
    assert recent.check(key) is None
    recent.begin(key)
    seen = recent.check(key)
    assert seen is not None and seen.payload is None
    recent.finish(key, b'{"type":"done"}')
    seen = recent.check(key)
    assert seen is not None and seen.payload == b'{"type":"done"}'


def test_keys_are_per_client():
    recent = RecentRequests(60, Clock())
    recent.begin(("alice", "1"))
    recent.finish(("alice", "1"), b"alice's reply")
    assert recent.check(("bob", "1")) is None


def test_finished_entries_expire_after_the_window_but_running_ones_do_not():
    clock = Clock()
    recent = RecentRequests(60, clock)
    recent.begin(("c", "done"))
    recent.finish(("c", "done"), b"x")
    recent.begin(("c", "running"))
    clock.now += 61
    assert recent.check(("c", "done")) is None
    assert recent.check(("c", "running")) is not None


def test_forget_lets_a_retry_run_again():
    recent = RecentRequests(60, Clock())
    recent.begin(("c", "busy"))
    recent.forget(("c", "busy"))
    assert recent.check(("c", "busy")) is None
    recent.finish(("c", "busy"), b"late")  # not in flight: ignored
    assert recent.check(("c", "busy")) is None


def test_memory_is_bounded_by_count_and_bytes():
    recent = RecentRequests(60, Clock(), max_entries=10, max_bytes=1000)
    for i in range(50):
        recent.begin(("c", str(i)))
        recent.finish(("c", str(i)), b"x" * 300)
    assert len(recent) <= 3
    assert recent.check(("c", "49")) is not None
    assert recent.check(("c", "0")) is None


def test_a_zero_window_remembers_nothing():
    recent = RecentRequests(0, Clock())
    recent.begin(("c", "1"))
    assert recent.check(("c", "1")) is None
