"""The bounded queue: priorities, displacement when full, expiry; admission by estimate."""

from __future__ import annotations

import itertools

import pytest

from daemon.engine import admission
from daemon.requests import Job, JobQueue, Priority, QueueFull, job_key
from tests.helpers import make_request

_ids = itertools.count()


class Sink:
    def __init__(self) -> None:
        self.replies: list[tuple] = []

    def delta(self, request, seq, text) -> None:  # type: ignore[no-untyped-def]
        self.replies.append(("delta", seq))

    def done(self, request, done) -> None:  # type: ignore[no-untyped-def]
        self.replies.append(("done",))

    def error(self, request, code, message, extra) -> None:  # type: ignore[no-untyped-def]
        self.replies.append(("error", str(code)))


def job(
    priority: Priority = Priority.INTERACTIVE,
    deadline: float = 100.0,
    prompt: str = "x" * 40,
    max_tokens: int = 10,
) -> Job:
    req = make_request(
        id=f"j{next(_ids)}",
        prompt=prompt,
        max_tokens=max_tokens,
        deadline=deadline,
        priority=priority,
    )
    return Job(req, Sink())


def test_interactive_jobs_run_before_background_ones_then_first_come():
    q = JobQueue(8)
    b1, i1, b2, i2 = job(Priority.BACKGROUND), job(), job(Priority.BACKGROUND), job()
    for j in (b1, i1, b2, i2):
        assert q.put(j) is None
    assert [q.get(0) for _ in range(4)] == [i1, i2, b1, b2]
    assert q.get(0.01) is None


def test_a_full_queue_makes_room_for_interactive_by_displacing_the_newest_background():
    q = JobQueue(3)
    b1, b2, i1 = job(Priority.BACKGROUND), job(Priority.BACKGROUND), job()
    for j in (b1, b2, i1):
        q.put(j)
    i2 = job()
    assert q.put(i2) is b2
    assert q.find(job_key(b2.request)) is None
    # Nothing left to displace for another interactive job, nor ever for a background one.
    with pytest.raises(QueueFull):
        q.put(job(Priority.BACKGROUND))
    i3 = job()
    assert q.put(i3) is b1
    with pytest.raises(QueueFull):
        q.put(job())
    assert q.snapshot() == [i1, i2, i3]


def test_remove_if_takes_out_expired_jobs_only():
    q = JobQueue(8)
    keep, late1, late2 = job(deadline=50), job(deadline=5), job(deadline=8)
    for j in (late1, keep, late2):
        q.put(j)
    gone = q.remove_if(lambda j: j.request.deadline < 10)
    assert gone == [late1, late2] or gone == [late2, late1]
    assert len(q) == 1 and q.get(0) is keep
    assert q.find(job_key(late1.request)) is None


def test_two_clients_may_pick_the_same_id():
    q = JobQueue(8)
    a = Job(make_request(id="same", client="alice"), Sink())
    b = Job(make_request(id="same", client="bob"), Sink())
    assert q.put(a) is None and q.put(b) is None
    assert q.find(("alice", "same")) is a and q.find(("bob", "same")) is b
    assert q.take_out("same", "bob") is b and q.find(("alice", "same")) is a
    assert q.take_out("same", "bob") is None


def test_a_cancelled_waiting_job_frees_its_place_at_once():
    q = JobQueue(2)
    first, second = job(), job()
    q.put(first)
    q.put(second)
    with pytest.raises(QueueFull):
        q.put(job())
    assert q.take_out(first.request.id, None) is first
    third = job()
    assert q.put(third) is None and q.snapshot() == [second, third]


def test_no_estimate_before_anything_was_measured():
    rates = admission.Rates(None, None)
    assert admission.job_seconds(400, 100, rates, 2048) is None
    assert admission.wait_seconds(job(), None, [], 0.0, rates, 2048) is None


def test_the_wait_counts_what_runs_and_what_is_ahead_by_priority():
    rates = admission.Rates(prefill=200.0, decode=50.0)
    # 40 characters -> 10 tokens + 30 of template = 40 tokens of prefill: 0.2 s.
    assert admission.prefill_seconds(40, rates, 2048) == pytest.approx(0.2)
    assert admission.job_seconds(40, 100, rates, 2048) == pytest.approx(0.2 + 2.0)
    # A prompt longer than the context costs at most a context's prefill (then too_long).
    assert admission.prefill_seconds(10**6, rates, 2048) == pytest.approx(2048 / 200)
    running = job()
    running.estimate_s, running.started_at = 3.0, 10.0
    ahead_i, ahead_b = job(), job(Priority.BACKGROUND)
    ahead_i.estimate_s = ahead_b.estimate_s = 1.5
    new_i, new_b = job(), job(Priority.BACKGROUND)
    # 1 s into the running job: 2 s of it left, then the interactive job ahead, then prefill.
    wait_i = admission.wait_seconds(new_i, running, [ahead_i, ahead_b], 11.0, rates, 2048)
    assert wait_i == pytest.approx(2.0 + 1.5 + 0.2)
    wait_b = admission.wait_seconds(new_b, running, [ahead_i, ahead_b], 11.0, rates, 2048)
    assert wait_b == pytest.approx(2.0 + 1.5 + 1.5 + 0.2)
    # A job running past its estimate counts as ending now, never negative.
    assert admission.wait_seconds(new_i, running, [], 30.0, rates, 2048) == pytest.approx(0.2)
