"""The governor's policy: examples, hypothesis properties, a replayed trace, a closed loop."""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import GovernorConfig
from daemon.governor import boards
from daemon.governor.policy import (
    Decision,
    Limits,
    ModelFacts,
    ctx_bounds,
    decide,
    kv_bytes_per_token,
    largest_fitting,
    thread_bounds,
)
from daemon.governor.replay import ReplaySensors
from daemon.governor.snapshot import Snapshot, ThrottleFlags
from daemon.governor.thermalsim import SimulatedSensors
from tests.fakesys import MIB, FakeClock

TRACE = Path(__file__).parent / "data" / "pi5_heatup.csv"
GIB = 1024 * MIB

# A Pi 5 (soft 80, hard 85; step down at 78, back up below 73) and SmolLM2's KV size.
CFG = boards.resolve(GovernorConfig(), boards.RASPBERRY_PI_5, n_ctx=4096)
FACTS = ModelFacts(kv_bytes_per_token=23040, n_ctx_train=8192, thread_ceiling=4)
PLENTY = 4 * GIB


def snap(t: float, temp: float | None = 60.0, headroom: int | None = PLENTY, **kw) -> Snapshot:
    return Snapshot(t=t, cpu_temp_c=temp, mem_available=headroom, **kw)


def step(
    limits: Limits,
    t: float,
    temp: float | None = 60.0,
    headroom: int | None = PLENTY,
    cfg: GovernorConfig = CFG,
    facts: ModelFacts = FACTS,
    **kw,
) -> Decision:
    return decide([snap(t, temp, headroom, **kw)], limits, cfg, facts, t)


# -- threads -------------------------------------------------------------------------------------


def test_hot_steps_down_by_one_and_says_why():
    d = step(Limits(4, 4096), 100.0, temp=79.3)
    assert d.changed and d.limits.threads == 3
    assert d.reason == "cpu 79.3 °C ≥ soft 80 - 2: threads 4 -> 3"
    assert d.limits.threads_changed_at == 100.0


def test_the_next_step_down_waits_for_the_hysteresis_window():
    first = step(Limits(4, 4096), 100.0, temp=79.0).limits
    held = step(first, 105.0, temp=79.5)
    assert not held.changed and held.limits.threads == 3
    assert "next step in 5 s" in held.reason
    assert step(held.limits, 110.0, temp=79.5).limits.threads == 2


def test_hard_limit_drops_straight_to_the_floor_without_waiting():
    just_changed = Limits(4, 4096, threads_changed_at=99.0)
    d = step(just_changed, 100.0, temp=85.0)
    assert d.limits.threads == 1
    assert d.reason == "cpu 85.0 °C ≥ hard 85: threads 4 -> 1"
    floor = boards.resolve(GovernorConfig(min_threads=2), boards.RASPBERRY_PI_5, 4096)
    assert step(just_changed, 100.0, temp=90.0, cfg=floor).limits.threads == 2


def test_never_below_min_threads_however_hot():
    cfg = CFG.model_copy(update={"min_threads": 3})
    limits = Limits(3, 4096)
    for t in range(0, 100, 10):
        limits = step(limits, float(t), temp=84.0, cfg=cfg).limits
    assert limits.threads == 3


def test_dead_band_between_step_up_and_step_down_holds():
    for temp in (73.0, 75.0, 77.9):
        d = step(Limits(2, 4096), 100.0, temp=temp)
        assert not d.changed and d.limits.threads == 2


def test_cool_steps_up_one_per_window_to_the_ceiling():
    limits, changes = Limits(1, 4096, threads_changed_at=0.0), []
    history: deque[Snapshot] = deque(maxlen=30)
    for t in range(1, 61):
        history.append(snap(float(t), temp=60.0))
        d = decide(list(history), limits, CFG, FACTS, float(t))
        if d.limits.threads != limits.threads:
            changes.append((t, d.limits.threads))
        limits = d.limits
    assert changes == [(10, 2), (20, 3), (30, 4)]
    assert (
        "cpu 60.0 °C < 73 for 10 s: threads 1 -> 2"
        in decide([snap(10.0)], Limits(1, 4096, threads_changed_at=0.0), CFG, FACTS, 10.0).reason
    )


def test_one_warm_reading_in_the_window_blocks_the_step_up():
    history = [snap(91.0, 60.0), snap(95.0, 75.0), snap(100.0, 60.0)]
    d = decide(history, Limits(2, 4096), CFG, FACTS, 100.0)
    assert d.limits.threads == 2
    d = decide(history[-1:], Limits(2, 4096), CFG, FACTS, 100.0)
    assert d.limits.threads == 3


def test_missing_temperature_holds_in_both_directions():
    for threads in (1, 2, 4):
        d = step(Limits(threads, 4096), 100.0, temp=None)
        assert not d.changed and d.limits.threads == threads
        assert "temperature unknown" in d.reason
    assert not decide([], Limits(2, 4096), CFG, FACTS, 0.0).changed


def test_firmware_throttling_steps_down_without_a_temperature():
    hot = ThrottleFlags(0x4)
    d = step(Limits(4, 4096), 100.0, temp=None, throttle=hot)
    assert d.limits.threads == 3 and "firmware throttling (0x4)" in d.reason
    # Under-voltage alone (and since-boot history) is not heat.
    calm = ThrottleFlags(0x50001)
    assert step(Limits(4, 4096), 100.0, temp=None, throttle=calm).limits.threads == 4


def test_threads_outside_the_bounds_are_clamped_at_once():
    assert step(Limits(8, 4096, threads_changed_at=99.0), 100.0).limits.threads == 4
    cfg = CFG.model_copy(update={"min_threads": 2})
    assert step(Limits(1, 4096), 100.0, cfg=cfg).limits.threads == 2


def test_an_unresolved_config_falls_back_to_the_generic_board():
    d = decide([snap(0.0, 84.0)], Limits(4, 2048), GovernorConfig(), FACTS, 0.0)
    assert d.limits.threads == 3 and "soft 85 - 2" in d.reason


# -- context and admission -----------------------------------------------------------------------


def test_memory_short_shrinks_at_once_leaving_twice_the_margin():
    d = step(Limits(4, 4096), 100.0, headroom=150 * MIB)
    # 150 MiB free + 90 MiB of KV in use - 400 MiB (twice the margin) fits nothing: the floor.
    assert d.limits.n_ctx == 512
    assert d.reason == "memory: headroom 150 MiB < margin 200 MiB: n_ctx 4096 -> 512"
    # A 1B-class model: 128 KiB of KV per token, 1 GiB at 8192.
    big = ModelFacts(kv_bytes_per_token=128 * 1024, n_ctx_train=8192, thread_ceiling=4)
    cfg = CFG.model_copy(update={"ctx_max": 8192})
    d = step(Limits(4, 8192), 100.0, headroom=190 * MIB, cfg=cfg, facts=big)
    # 190 + 1024 - 400 MiB leaves 814 MiB: 6512 tokens, 6400 in steps of 256.
    assert d.limits.n_ctx == 6400 and d.limits.ctx_changed_at == 100.0
    assert d.reason == "memory: headroom 190 MiB < margin 200 MiB: n_ctx 8192 -> 6400"
    # Short again soon after that rebuild: memory is draining, go to the floor at once.
    again = step(d.limits, 101.0, headroom=195 * MIB, cfg=cfg, facts=big)
    assert again.limits.n_ctx == 512 and "1 s after a rebuild" in again.reason
    # Once the rebuild has freed what it should, it stays put.
    settled = step(d.limits, 101.0, headroom=190 * MIB + 1792 * 128 * 1024, cfg=cfg, facts=big)
    assert not settled.changed


def test_memory_unknown_keeps_the_context():
    d = step(Limits(4, 4096), 100.0, headroom=None)
    assert d.limits.n_ctx == 4096 and d.limits.admit
    assert "memory unknown" in d.reason


def test_grows_only_with_room_to_spare_and_once_per_hold():
    cfg = CFG.model_copy(update={"ctx_max": 8192})
    limits = Limits(4, 1024, ctx_changed_at=90.0)
    waiting = step(limits, 100.0, headroom=2 * GIB, cfg=cfg)
    assert waiting.limits.n_ctx == 1024 and "grow in 20 s" in waiting.reason
    grown = step(limits, 120.0, headroom=2 * GIB, cfg=cfg)
    assert grown.limits.n_ctx == 8192 and grown.limits.ctx_changed_at == 120.0
    # Just under twice the margin above what a bigger context needs: no growth.
    kv = FACTS.kv_bytes_per_token
    tight = 400 * MIB + 256 * kv - 1
    assert step(Limits(4, 1024), 200.0, headroom=tight, cfg=cfg).limits.n_ctx == 1024


def test_context_never_exceeds_n_ctx_train_or_ctx_max():
    facts = ModelFacts(1000, n_ctx_train=2048, thread_ceiling=4)
    cfg = CFG.model_copy(update={"ctx_max": 8192})
    assert step(Limits(4, 1024), 100.0, headroom=8 * GIB, cfg=cfg, facts=facts).limits.n_ctx == 2048
    assert step(Limits(4, 1024), 100.0, headroom=8 * GIB).limits.n_ctx == 4096


def test_admission_stops_when_critical_and_resumes_at_twice_that():
    d = step(Limits(4, 512), 100.0, headroom=90 * MIB)
    assert not d.limits.admit
    assert "headroom 90 MiB < critical 100 MiB: admission off" in d.reason
    assert not step(d.limits, 101.0, headroom=150 * MIB).limits.admit
    resumed = step(d.limits, 102.0, headroom=200 * MIB)
    assert resumed.limits.admit and resumed.changed


def test_kv_bytes_per_token_from_metadata():
    llama = {
        "general.architecture": "llama",
        "llama.block_count": "30",
        "llama.attention.head_count": "9",
        "llama.attention.head_count_kv": "3",
        "llama.embedding_length": "576",
    }
    assert kv_bytes_per_token(llama) == 30 * 3 * 128 * 2 == 23040
    assert kv_bytes_per_token(llama, "q8_0", "q8_0") == 12240
    assert kv_bytes_per_token(llama, 8, 1) == 30 * 3 * 64 * (34 / 32 + 2)
    no_gqa = {k: v for k, v in llama.items() if "head_count_kv" not in k}
    assert kv_bytes_per_token(no_gqa) == 3 * 23040
    gemma = {
        "general.architecture": "gemma3",
        "gemma3.block_count": "18",
        "gemma3.attention.head_count": "4",
        "gemma3.attention.head_count_kv": "1",
        "gemma3.embedding_length": "640",
        "gemma3.attention.key_length": "256",
        "gemma3.attention.value_length": "256",
    }
    assert kv_bytes_per_token(gemma) == 18 * 512 * 2
    with pytest.raises(ValueError, match="block_count"):
        kv_bytes_per_token({"general.architecture": "mamba"})
    with pytest.raises(ValueError, match="cache type"):
        kv_bytes_per_token(llama, "q3_k")


def kv_cache_mib(capfd, path: Path, **kw) -> tuple[float, dict[str, str]]:
    """llama.cpp's KV size (all caches, as it logs them) and the model's metadata."""
    from daemon.engine.llama_compat import load_llama

    llm = load_llama(str(path), repack=False, n_ctx=2048, n_batch=256, verbose=True, **kw)
    try:
        metadata = llm.metadata
    finally:
        llm.close()
    logged = capfd.readouterr().err
    sizes = [float(m) for m in re.findall(r"llama_kv_cache: size =\s+([\d.]+) MiB", logged)]
    assert sizes, "llama.cpp printed no KV size"
    return sum(sizes), metadata


@pytest.mark.model
def test_kv_formula_matches_llama_cpp_for_the_default_model(model_path: Path, capfd):
    """llama.cpp's own KV buffer size for the real model equals the formula's (45 MiB)."""
    mib, metadata = kv_cache_mib(capfd, model_path)
    assert mib == pytest.approx(kv_bytes_per_token(metadata) * 2048 / MIB, rel=1e-3)
    q8, _ = kv_cache_mib(capfd, model_path, type_k=8, type_v=8, flash_attn=True)
    assert q8 == pytest.approx(kv_bytes_per_token(metadata, "q8_0", "q8_0") * 2048 / MIB, rel=1e-3)


@pytest.mark.model
def test_kv_formula_is_exact_or_an_upper_bound_for_gemma3_sliding_window(capfd):
    """Gemma 3 keeps 15 of its 18 layers to a 512-token window when swa_full is off."""
    from daemon import models

    try:
        path = models.locate("gemma3-270m", None)
    except models.ModelError:
        pytest.skip("gemma3-270m not installed (edgellm model fetch gemma3-270m)")
    full, metadata = kv_cache_mib(capfd, path)  # llama-cpp-python's default: swa_full=True
    formula = kv_bytes_per_token(metadata) * 2048 / MIB
    assert full == pytest.approx(formula, rel=1e-3)
    windowed, _ = kv_cache_mib(capfd, path, swa_full=False)
    assert windowed < 0.6 * formula


# -- properties ----------------------------------------------------------------------------------

temps = st.one_of(st.none(), st.floats(-10, 130))
flags = st.one_of(st.none(), st.integers(0, 0xF000F).map(ThrottleFlags))
headrooms = st.one_of(st.none(), st.integers(0, 16 * GIB))


@st.composite
def setups(draw) -> tuple[GovernorConfig, ModelFacts]:
    min_threads = draw(st.integers(1, 4))
    ctx_min = draw(st.sampled_from([128, 256, 512, 1000, 2048]))
    cfg = GovernorConfig(
        soft_temp_c=draw(st.floats(50, 90)),
        hard_temp_c=None,
        temp_band_c=draw(st.floats(0, 5)),
        hysteresis_c=draw(st.floats(0, 10)),
        hysteresis_s=draw(st.floats(1, 30)),
        min_threads=min_threads,
        max_threads=draw(st.one_of(st.none(), st.integers(min_threads, 16))),
        ctx_min=ctx_min,
        ctx_max=draw(st.one_of(st.none(), st.integers(ctx_min, 16384))),
        ctx_hold_s=draw(st.floats(0, 60)),
        mem_margin_mb=draw(st.integers(0, 512)),
        critical_mb=draw(st.integers(0, 256)),
    )
    facts = ModelFacts(
        kv_bytes_per_token=draw(st.integers(1, 512 * 1024)),
        n_ctx_train=draw(st.sampled_from([256, 2048, 8192, 32768])),
        thread_ceiling=draw(st.integers(1, 16)),
        min_threads=draw(st.integers(1, 2)),
    )
    return boards.resolve(cfg, boards.RASPBERRY_PI_5), facts


@st.composite
def in_bounds(draw, cfg: GovernorConfig, facts: ModelFacts) -> Limits:
    t_low, t_high = thread_bounds(cfg, facts)
    c_low, c_high = ctx_bounds(cfg, facts)
    return Limits(
        threads=draw(st.integers(t_low, t_high)),
        n_ctx=draw(st.integers(c_low, c_high)),
        admit=draw(st.booleans()),
        threads_changed_at=draw(st.floats(-1000, 1000)),
        ctx_changed_at=draw(st.floats(-1000, 1000)),
    )


@settings(database=None)
@given(
    setups(),
    st.lists(st.tuples(temps, flags, headrooms), max_size=12),
    st.integers(1, 64),
    st.integers(128, 65536),
    st.floats(0, 2000),
)
def test_prop_thread_and_context_bounds_always_hold(setup, readings, threads, n_ctx, now):
    cfg, facts = setup
    history = [
        Snapshot(t=now - len(readings) + i, cpu_temp_c=c, throttle=f, mem_available=h)
        for i, (c, f, h) in enumerate(readings)
    ]
    d = decide(history, Limits(threads, n_ctx), cfg, facts, now)
    t_low, t_high = thread_bounds(cfg, facts)
    c_low, c_high = ctx_bounds(cfg, facts)
    assert t_low <= d.limits.threads <= t_high
    assert c_low <= d.limits.n_ctx <= c_high
    assert d.changed == (d.limits != Limits(threads, n_ctx))
    assert d.reason


@settings(database=None)
@given(st.data(), setups(), st.integers(0, 16 * GIB), temps, st.floats(0, 2000))
def test_prop_never_a_context_whose_kv_does_not_fit(data, setup, headroom, temp, now):
    cfg, facts = setup
    current = data.draw(in_bounds(cfg, facts))
    d = decide([snap(now, temp, headroom)], current, cfg, facts, now)
    kv, margin = facts.kv_bytes_per_token, (cfg.mem_margin_mb or 0) * MIB
    fits = kv * d.limits.n_ctx + margin <= headroom + kv * current.n_ctx
    assert fits or d.limits.n_ctx == ctx_bounds(cfg, facts)[0]
    if d.limits.n_ctx > current.n_ctx:  # a growth leaves a second margin free
        assert kv * d.limits.n_ctx + 2 * margin <= headroom + kv * current.n_ctx


@settings(database=None)
@given(st.data(), setups(), st.floats(0, 2000))
def test_prop_memory_unknown_keeps_the_context(data, setup, now):
    cfg, facts = setup
    current = data.draw(in_bounds(cfg, facts))
    d = decide([snap(now, 70.0, None)], current, cfg, facts, now)
    assert (d.limits.n_ctx, d.limits.admit) == (current.n_ctx, current.admit)


@settings(database=None)
@given(st.data(), setups(), st.floats(-1000, 1000))
def test_prop_missing_temperature_holds_threads(data, setup, now):
    cfg, facts = setup
    current = data.draw(in_bounds(cfg, facts))
    d = decide([snap(now - 1, None), snap(now, None)], current, cfg, facts, now)
    assert d.limits.threads == current.threads


def run(
    reading: Callable[[float, Limits], Snapshot],
    limits: Limits,
    cfg: GovernorConfig,
    facts: ModelFacts,
    seconds: float,
    dt: float = 1.0,
) -> list[tuple[float, Limits]]:
    """Feed the governor a reading every dt seconds, applying each decision at once."""
    history: deque[Snapshot] = deque(maxlen=60)
    out = []
    t = 0.0
    while t <= seconds:
        history.append(reading(t, limits))
        limits = decide(list(history), limits, cfg, facts, t).limits
        out.append((t, limits))
        t += dt
    return out


def changes(trace: list[tuple[float, Limits]], attr: str, start: Limits) -> list[tuple[float, int]]:
    out, last = [], getattr(start, attr)
    for t, limits in trace:
        if getattr(limits, attr) != last:
            out.append((t, getattr(limits, attr)))
            last = getattr(limits, attr)
    return out


def monotone(values: list[int]) -> bool:
    steps = [b - a for a, b in pairwise(values)]
    return all(s > 0 for s in steps) or all(s < 0 for s in steps)


@settings(max_examples=60, deadline=None, database=None)
@given(st.data(), setups(), temps, flags, headrooms)
def test_prop_constant_input_reaches_a_fixed_point_without_oscillating(
    data, setup, temp, throttle, headroom
):
    cfg, facts = setup
    start = data.draw(in_bounds(cfg, facts))
    start = Limits(start.threads, start.n_ctx, start.admit)  # no change in living memory
    c_low, c_high = ctx_bounds(cfg, facts)
    t_low, t_high = thread_bounds(cfg, facts)
    # Long enough for every thread step and every context growth to be taken.
    seconds = (t_high - t_low + 2) * cfg.hysteresis_s + ((c_high - c_low) // 256 + 3) * (
        cfg.ctx_hold_s + 1
    )

    def reading(t: float, _: Limits) -> Snapshot:
        return Snapshot(t=t, cpu_temp_c=temp, throttle=throttle, mem_available=headroom)

    trace = run(reading, start, cfg, facts, seconds, dt=max(1.0, seconds / 2000))
    thread_changes = changes(trace, "threads", start)
    # At most one thread change per hysteresis window, all in one direction.
    for (a, _), (b, _) in pairwise(thread_changes):
        assert b - a >= cfg.hysteresis_s
    assert monotone([start.threads] + [v for _, v in thread_changes])
    assert monotone([start.n_ctx] + [v for _, v in changes(trace, "n_ctx", start)])
    assert len(changes(trace, "admit", start)) <= 1
    # A fixed point: the last stretch changes nothing.
    tail = [limits for _, limits in trace[-3:]]
    assert tail[0] == tail[1] == tail[2]


@settings(max_examples=60, deadline=None, database=None)
@given(st.data(), setups(), st.integers(0, 16 * GIB), st.integers(0, 2**32))
def test_prop_memory_that_responds_to_the_context_settles_in_one_change(data, setup, extra, seed):
    """Headroom = what the rest of the machine leaves minus our KV cache, with noise."""
    cfg, facts = setup
    start = data.draw(in_bounds(cfg, facts))
    start = Limits(start.threads, start.n_ctx, start.admit)
    margin = (cfg.mem_margin_mb or 0) * MIB
    kv = facts.kv_bytes_per_token
    free = kv * start.n_ctx + extra  # the KV cache in use is real memory: it was free once
    noise = random.Random(seed)

    def reading(t: float, limits: Limits) -> Snapshot:
        jitter = int(noise.uniform(-0.45, 0.45) * margin)
        headroom = max(0, free - kv * limits.n_ctx + jitter)
        return Snapshot(t=t, cpu_temp_c=60.0, mem_available=headroom)

    trace = run(reading, start, cfg, facts, seconds=10 * (cfg.ctx_hold_s + 1), dt=1.0)
    sizes = [start.n_ctx] + [v for _, v in changes(trace, "n_ctx", start)]
    # Never shrinks after it has grown: noise smaller than the margin cannot make it cycle.
    diffs = [b - a for a, b in pairwise(sizes)]
    first_growth = next((i for i, d in enumerate(diffs) if d > 0), len(diffs))
    assert all(d > 0 for d in diffs[first_growth:])
    assert sum(1 for d in diffs if d < 0) <= 1


def test_largest_fitting_steps_in_256_and_keeps_the_ends():
    assert largest_fitting(512, 2048, 1, 10_000) == 2048
    assert largest_fitting(512, 2048, 1, 1500) == 1280
    assert largest_fitting(500, 2048, 1, 505) == 500
    assert largest_fitting(512, 2048, 1, 400) is None
    assert largest_fitting(512, 1000, 1, 999) == 768


# -- a replayed trace and a closed loop ---------------------------------------------------------


def test_replayed_pi5_heat_up_lowers_threads_then_restores_them():
    clock = FakeClock(0.0)
    sensors = ReplaySensors(TRACE, clock)
    history: deque[Snapshot] = deque(maxlen=30)
    limits = Limits(4, 4096)
    seen: list[tuple[float, int, str]] = []
    for _ in range(400):
        history.append(sensors.read())
        d = decide(list(history), limits, CFG, FACTS, clock.t)
        if d.changed:
            seen.append((clock.t, d.limits.threads, d.reason))
        limits = d.limits
        clock.advance(1.0)
    # Down one step per window from the first reading at 78 °C (t=80 s, 78.4 °C) while the
    # recording keeps heating, to the floor; back up one per window once it has cooled.
    assert [(t, n) for t, n, _ in seen[:3]] == [(80.0, 3), (90.0, 2), (100.0, 1)]
    assert seen[0][2] == "cpu 78.4 °C ≥ soft 80 - 2: threads 4 -> 3"
    assert [n for _, n, _ in seen[3:]] == [2, 3, 4]
    assert all(t > 240 and "< 73 for 10 s" in why for t, _, why in seen[3:])


def test_closed_loop_with_the_thermal_model_settles_below_the_soft_limit():
    clock = FakeClock(0.0)
    sim = SimulatedSensors(clock, mem_available=2 * GIB)
    history: deque[Snapshot] = deque(maxlen=30)
    limits = Limits(4, 4096)
    temps, threads = [], []
    for _ in range(20 * 60):
        sim.set_load(limits.threads, busy=True)
        reading = sim.read()
        history.append(reading)
        limits = decide(list(history), limits, CFG, FACTS, clock.t).limits
        temps.append(reading.cpu_temp_c)
        threads.append(limits.threads)
        clock.advance(1.0)
    # Four threads would settle near 90 °C; the governor holds it under the soft limit at 3.
    assert max(temps) < 80
    assert threads[-600:] == [3] * 600
