"""The thread sweep's bookkeeping (pure), its slices (a fake model at the engine seam) and when
the worker measures again (a fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.engine import sweep as sweep_mod
from daemon.engine import tuning
from daemon.engine.sweep import Sweeper, batch_threads, disagrees, measure_prefill, measure_slice
from daemon.engine.tuning import ThreadTuner


def run_plan(s: Sweeper, speeds: dict[int, list[float]]) -> list[int]:
    """Feed each planned count its next speed; the order the counts were measured in."""
    order = []
    while (n := s.next_count()) is not None:
        order.append(n)
        s.record(n, speeds[n].pop(0))
    return order


def test_counts_are_interleaved_over_rounds():
    s = Sweeper([1, 2, 3])
    order = run_plan(s, {n: [10.0 * n] * 3 for n in (1, 2, 3)})
    assert order == [1, 2, 3, 3, 2, 1, 1, 2, 3]
    assert s.result().best == 3 and s.result().samples == 9


def test_one_collapsed_sample_does_not_decide():
    # The case: another process busy while 2 threads were measured (0.4 and 8.5 tok/s
    # against ~55 at 1 thread), then quiet again. The old sweep chose 1 thread for good.
    s = Sweeper([1, 2])
    order = run_plan(s, {1: [55.0, 54.0, 56.0], 2: [0.4, 8.5, 95.0, 94.0, 96.0]})
    result = s.result()
    assert result.best == 2 and result.tokens_per_s == {1: 56.0, 2: 96.0}
    assert result.collapsed >= 1 and order.count(2) > 3  # measured again after the collapse


def test_contention_in_every_sample_picks_what_is_fastest_under_it():
    s = Sweeper([1, 2])
    run_plan(s, {1: [50.0] * 3, 2: [23.0] * 3})
    assert s.result().best == 1


def test_fewer_threads_win_within_three_percent():
    s = Sweeper([1, 2, 3, 4])
    run_plan(s, {1: [40.0] * 3, 2: [80.0] * 5, 3: [79.0] * 3, 4: [81.0] * 5})
    assert s.result().best == 2


def test_a_tie_that_costs_a_core_is_confirmed_before_it_wins():
    # The case: one quiet-looking sweep measured 132.3 tok/s at 1 thread against 135.0
    # at 2 (a tie), while 2 threads usually give 142-147. More samples of both decide it.
    s = Sweeper([1, 2])
    speeds = {1: [130.0, 132.3, 131.0, 117.0, 120.0], 2: [135.0, 128.0, 133.0, 146.0, 144.0]}
    order = run_plan(s, speeds)
    assert order == [1, 2, 2, 1, 1, 2, 2, 1, 2, 1]
    assert s.result().best == 2 and s.result().tokens_per_s == {1: 132.3, 2: 146.0}


def test_a_confirmed_tie_goes_to_fewer_threads():
    s = Sweeper([1, 2])
    run_plan(s, {1: [100.0] * 5, 2: [102.0] * 5})
    assert s.result().best == 1 and s.result().samples == 10


def test_extra_samples_are_bounded():
    s = Sweeper([1, 2])
    # Wildly alternating samples: every other one a "collapse"; the plan must still end.
    speeds = {1: [10.0, 100.0] * 10, 2: [100.0, 10.0] * 10}
    assert len(run_plan(s, speeds)) <= 3 * 2 + 2 * 2 + 2 * sweep_mod.CONFIRM_ROUNDS


def test_disagreement_is_far_below_the_measured_figure():
    result = Sweeper([1])
    result.record(1, 100.0)
    r = result.result()
    assert disagrees(r, 1, 60.0) and not disagrees(r, 1, 80.0) and not disagrees(r, 2, 1.0)


class FakeLlm:
    """A context that decodes instantly; records thread counts, evals and resets."""

    def __init__(self, n_tokens: int = 5, n_ctx: int = 2048) -> None:
        self.threads: list[int] = []
        self.batch_threads: list[int | None] = []
        self.n_threads = 1
        self.evals: list[list[int]] = []
        self.input_ids = list(range(100, 100 + n_tokens))
        self.n_tokens = n_tokens
        self._n_ctx = n_ctx
        self.resets = 0

    def n_ctx(self) -> int:
        return self._n_ctx

    def reset(self) -> None:
        self.resets += 1
        self.n_tokens = 0
        self.input_ids = []

    def eval(self, tokens: list[int]) -> None:
        self.evals.append(list(tokens))
        self.input_ids += tokens
        self.n_tokens += len(tokens)


@pytest.fixture
def fake_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    def set_threads(llm: FakeLlm, n: int, n_batch: int | None = None) -> None:
        llm.threads.append(n)
        llm.batch_threads.append(n_batch)

    monkeypatch.setattr(sweep_mod.llama_compat, "set_threads", set_threads)


def test_a_slice_ends_at_once_when_a_job_arrives(fake_threads):
    llm = FakeLlm()
    calls = {"n": 0}

    def abandon() -> bool:
        calls["n"] += 1
        return calls["n"] > 3  # a job arrives after the second token

    assert measure_slice(llm, [1, 2], 2, lambda: None, abandon) is None
    # Single-token decodes only (no prompt to evaluate first), and none after the job came.
    assert llm.threads == [2] and llm.evals == [[104], [104]]


def test_a_slice_decodes_single_tokens_after_what_the_cache_holds(fake_threads):
    llm = FakeLlm()
    beats = []
    sample = measure_slice(llm, [1], 1, lambda: beats.append(1), lambda: False, tokens=8)
    assert sample is not None and sample[0] > 0
    assert len(beats) == 9 and llm.evals == [[104]] * 9 and llm.resets == 0


@pytest.mark.parametrize("n_tokens", [0, 2040])
def test_an_empty_or_full_cache_starts_from_the_prompt(fake_threads, n_tokens):
    llm = FakeLlm(n_tokens=n_tokens)
    assert measure_slice(llm, [7, 8, 9], 1, lambda: None, lambda: False, tokens=8) is not None
    assert llm.resets == 1 and llm.evals[0] == [7, 8, 9] and llm.evals[1:] == [[9]] * 9


def test_a_prefill_sample_evaluates_one_batch_after_the_cached_prompt(fake_threads):
    llm = FakeLlm(n_tokens=0)
    llm.eval([7, 8, 9])
    llm.eval([9, 9])  # what a decode slice left after the prompt
    sample = measure_prefill(llm, [7, 8, 9], 3, lambda: None, lambda: False, tokens=8)
    assert sample is not None and sample[0] > 0
    # Prefill on 3 threads, decode left as it was; the prompt is not evaluated again.
    assert llm.threads == [1] and llm.batch_threads == [3]
    assert llm.evals[2:] == [[7, 8, 9, 7, 8, 9, 7, 8]] and llm.resets == 0


def test_a_prefill_sample_starts_from_the_prompt_when_the_cache_holds_another(fake_threads):
    llm = FakeLlm(n_tokens=5)  # tokens 100..104: not the prompt
    assert measure_prefill(llm, [7, 8], 2, lambda: None, lambda: False, tokens=4) is not None
    assert llm.resets == 1 and llm.evals == [[7, 8], [7, 8, 7, 8]]


def test_a_waiting_job_skips_the_prefill_sample(fake_threads):
    llm = FakeLlm()
    assert measure_prefill(llm, [7], 2, lambda: None, lambda: True) is None
    assert llm.evals == [] and llm.threads == []


@pytest.mark.parametrize(
    ("threads", "ceiling", "best_batch", "expected"),
    [
        (2, 2, 4, 4),  # decode at its best: prefill at its own best
        (1, 2, 4, 3),  # the governor took decode one step down: prefill too
        (1, 4, 2, 1),  # never below one
        (2, 2, None, 2),  # not measured yet: prefill on the decode count
    ],
)
def test_prefill_threads_step_down_with_decode(threads, ceiling, best_batch, expected):
    assert batch_threads(threads, ceiling, best_batch) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Sample = tuple[float, float | None] | None


class Machine:
    """What a slice measures at n threads: decode tok/s and other processes' cores, by phase."""

    def __init__(self, speeds: dict[int, float], others: float = 0.0):
        self.speeds = speeds
        self.others = others
        self.abandon_next = 0  # slices to abandon (a job arrived)

    def __call__(self, _llm: Any, _prompt: Any, n: int, *_a: Any, **_k: Any) -> Sample:
        if self.abandon_next:
            self.abandon_next -= 1
            return None
        return self.speeds[n], self.others


def tuner_with(monkeypatch, machine: Any, prefill: Any = None) -> ThreadTuner:
    monkeypatch.setattr(tuning.cpus, "usable", lambda: 2)
    monkeypatch.setattr(tuning, "measure_slice", machine)
    monkeypatch.setattr(tuning, "measure_prefill", prefill or machine)
    return ThreadTuner(Clock())


class Resettable(FakeLlm):
    resets = 0

    def reset(self) -> None:
        self.resets += 1


def sweep_to_end(t: ThreadTuner, threads: int = 2, limit: int = 50) -> int:
    for _ in range(limit):
        threads = t.step(Resettable(), lambda: [1], threads, lambda: None, lambda: False)
        if not t.pending():
            return threads
    raise AssertionError("the sweep did not end")


def test_slices_wait_for_a_pause_after_a_job(monkeypatch):
    t = tuner_with(monkeypatch, Machine({1: 50.0, 2: 90.0}))
    clock = t._clock  # type: ignore[attr-defined]
    t.want()
    assert t.pending()
    t.busy()
    assert not t.pending()
    clock.now += tuning.IDLE_S
    assert t.pending()


def test_a_quiet_sweep_sets_the_best_and_plans_nothing(monkeypatch):
    t = tuner_with(monkeypatch, Machine({1: 50.0, 2: 90.0}))
    t.want()
    assert sweep_to_end(t) == 2 and t.result is not None and t.result.contended == 0
    t._clock.now += 10_000  # type: ignore[attr-defined]
    assert not t.pending()


def test_prefill_is_swept_after_decode_and_gets_its_own_count(monkeypatch):
    # A Pi 5's shape: decode gains nothing from the second thread, prefill does.
    t = tuner_with(monkeypatch, Machine({1: 34.0, 2: 34.5}), Machine({1: 150.0, 2: 290.0}))
    t.want()
    assert sweep_to_end(t) == 1
    assert t.result is not None and t.result.best == 1
    assert t.result.best_batch == 2 and t.result.batch_tokens_per_s == {1: 150.0, 2: 290.0}
    assert t.batch_threads(1) == 2


def test_the_last_prefill_figures_stand_while_decode_is_measured_again(monkeypatch):
    t = tuner_with(monkeypatch, Machine({1: 50.0, 2: 90.0}), Machine({1: 150.0, 2: 290.0}))
    t.want()
    sweep_to_end(t)
    t.want()
    t.step(Resettable(), lambda: [1], 2, lambda: None, lambda: False)
    assert t.result is not None and t.result.best_batch == 2


def test_live_prefill_far_below_the_sweep_measures_again(monkeypatch):
    t = tuner_with(monkeypatch, Machine({1: 50.0, 2: 90.0}), Machine({1: 150.0, 2: 290.0}))
    t.want()
    sweep_to_end(t)
    t._clock.now += tuning.MIN_GAP_S  # type: ignore[attr-defined]
    t.after_prefill(2, 2000, 200.0)  # a long prompt later in the context: slower, not far
    t.after_prefill(2, 50, 10.0)  # too short to say
    t.after_prefill(1, 2000, 10.0)  # the governor's count, not the sweep's
    assert not t.pending()
    for _ in range(tuning.DISAGREE_JOBS):
        t.after_prefill(2, 2000, 20.0)
    assert t.pending()


def test_an_abandoned_slice_is_measured_again(monkeypatch):
    machine = Machine({1: 50.0, 2: 90.0})
    machine.abandon_next = 2
    t = tuner_with(monkeypatch, machine)
    t.want()
    sweep_to_end(t)
    assert t.result is not None and t.result.samples == 6


def test_a_contended_sweep_is_measured_again_later_with_back_off(monkeypatch):
    machine = Machine({1: 50.0, 2: 20.0}, others=1.0)
    t = tuner_with(monkeypatch, machine)
    clock = t._clock  # type: ignore[attr-defined]
    t.want()
    assert sweep_to_end(t) == 1  # best under the load
    assert not t.pending()
    clock.now += tuning.FIRST_BACKOFF_S
    assert t.pending()
    assert sweep_to_end(t) == 1
    clock.now += tuning.FIRST_BACKOFF_S
    assert not t.pending()  # backed off: twice as long now
    clock.now += tuning.FIRST_BACKOFF_S
    assert t.pending()
    machine.speeds, machine.others = {1: 50.0, 2: 90.0}, 0.0
    assert sweep_to_end(t) == 2  # quiet at last: the count that is best alone
    clock.now += 10_000
    assert not t.pending()


def test_live_decode_far_below_the_sweep_measures_again(monkeypatch):
    t = tuner_with(monkeypatch, Machine({1: 50.0, 2: 90.0}))
    t.want()
    assert sweep_to_end(t) == 2
    clock = t._clock  # type: ignore[attr-defined]
    t.after_job(2, 100, 40.0)
    t.after_job(2, 100, 40.0)
    t.after_job(2, 100, 40.0)
    assert not t.pending()  # too soon after the sweep
    clock.now += tuning.MIN_GAP_S
    t.after_job(2, 8, 10.0)  # too short to say
    assert not t.pending()
    t.after_job(2, 100, 40.0)  # still slow, and the gap has passed
    assert t.pending()


def test_a_tie_winner_slower_live_than_more_threads_measured_is_checked_once(monkeypatch):
    machine = Machine({1: 100.0, 2: 102.0})
    t = tuner_with(monkeypatch, machine)
    t.want()
    assert sweep_to_end(t) == 1  # a tie, confirmed: fewer threads win
    clock = t._clock  # type: ignore[attr-defined]
    clock.now += tuning.MIN_GAP_S
    t.after_job(1, 100, 101.0)  # live at 1 thread, below what 2 threads measured
    assert t.pending()
    machine.speeds = {1: 80.0, 2: 140.0}  # the tie was not real
    assert sweep_to_end(t) == 2
    # Once re-measured, a live decode a little below the sweep does not start another.
    machine.speeds = {1: 100.0, 2: 102.0}
    t.want()
    assert sweep_to_end(t) == 1
    clock.now += tuning.MIN_GAP_S
    t.after_job(1, 100, 101.0)
    assert t.pending()
    sweep_to_end(t)
    clock.now += tuning.MIN_GAP_S
    t.after_job(1, 100, 101.0)
    assert not t.pending()


def test_the_fastest_count_is_never_beaten_by_a_slower_one(monkeypatch):
    t = tuner_with(monkeypatch, Machine({1: 50.0, 2: 90.0}))
    t.want()
    assert sweep_to_end(t) == 2
    t._clock.now += tuning.MIN_GAP_S  # type: ignore[attr-defined]
    t.after_job(2, 100, 85.0)
    assert not t.pending()


def test_a_fast_job_resets_the_disagreement(monkeypatch):
    t = tuner_with(monkeypatch, Machine({1: 50.0, 2: 90.0}))
    t.want()
    sweep_to_end(t)
    t._clock.now += tuning.MIN_GAP_S  # type: ignore[attr-defined]
    for tps in (40.0, 40.0, 88.0, 40.0, 40.0):
        t.after_job(2, 100, tps)
    assert not t.pending()
    t.after_job(1, 100, 1.0)  # not at the sweep's count (the governor lowered it): ignored
    assert not t.pending()


def test_a_failed_slice_keeps_the_threads(monkeypatch):
    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("decode failed")

    t = tuner_with(monkeypatch, boom)
    t.want()
    llm = Resettable()
    assert t.step(llm, lambda: [1], 2, lambda: None, lambda: False) == 2
    assert llm.resets == 1 and not t.pending() and t.result is None
