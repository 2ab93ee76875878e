"""Pure policy: recent sensor Snapshots and the limits in force -> the limits to use, and why."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from daemon.config import GovernorConfig
from daemon.governor import boards
from daemon.governor.snapshot import MIB, Snapshot

CTX_STEP = 256  # context lengths move in these steps: finer ones buy little and cost rebuilds
# A temperature falling at least this fast is already answering the last step down; stepping
# again before it settles overshoots (a Pi cools with a time constant of about a minute).
FALLING_C_PER_S = 0.01

# Bytes per cached element for each KV-cache type llama.cpp offers (quantised types store
# blocks of 32 values: q8_0 = 32 bytes + an f16 scale, q4_0 = 16 bytes + a scale ...).
BYTES_PER_ELEMENT: dict[str, Fraction] = {
    "f32": Fraction(4),
    "f16": Fraction(2),
    "bf16": Fraction(2),
    "q8_0": Fraction(34, 32),
    "q5_1": Fraction(24, 32),
    "q5_0": Fraction(22, 32),
    "q4_1": Fraction(20, 32),
    "q4_0": Fraction(18, 32),
    "iq4_nl": Fraction(18, 32),
}
# llama-cpp-python's Llama(type_k=...) takes ggml's type numbers.
GGML_TYPE_NAMES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0"}
GGML_TYPE_NAMES |= {20: "iq4_nl", 30: "bf16"}


@dataclass(frozen=True)
class Limits:
    """What the engine runs with: generation threads, context length, and whether it takes work."""

    threads: int
    n_ctx: int
    admit: bool = True
    # When threads / n_ctx last changed (monotonic s). Not part of equality: two Limits are the
    # same limits whatever their history.
    threads_changed_at: float = field(default=-math.inf, compare=False)
    ctx_changed_at: float = field(default=-math.inf, compare=False)


@dataclass(frozen=True)
class ModelFacts:
    """What the policy needs to know about the loaded model and this machine's speed."""

    kv_bytes_per_token: int
    n_ctx_train: int
    thread_ceiling: int  # the fastest measured thread count (or the cores before a sweep)
    min_threads: int = 1


@dataclass(frozen=True)
class Decision:
    """The limits to use next, why, and whether they differ from the ones in force."""

    limits: Limits
    reason: str
    changed: bool


def decide(
    history: Sequence[Snapshot],
    current: Limits,
    cfg: GovernorConfig,
    facts: ModelFacts,
    now: float,
) -> Decision:
    """The next limits from recent readings (oldest first) and the limits actually in force.

    `current` must be what the engine runs with now (the context actually allocated), not a
    target still waiting for a rebuild: the freed KV cache is counted as available. Give a cfg
    resolved with boards.resolve(); null keys fall back to the generic board and n_ctx_train.
    """
    cfg = boards.resolve(cfg, boards.GENERIC, facts.n_ctx_train)
    latest = history[-1] if history else None
    threads, t_why = _threads(history, current, cfg, facts, now)
    n_ctx, c_why = _context(latest, current, cfg, facts, now)
    admit, a_why = _admission(latest, current, cfg)
    limits = Limits(
        threads=threads,
        n_ctx=n_ctx,
        admit=admit,
        threads_changed_at=now if threads != current.threads else current.threads_changed_at,
        ctx_changed_at=now if n_ctx != current.n_ctx else current.ctx_changed_at,
    )
    changes = [
        why
        for why, moved in (
            (t_why, threads != current.threads),
            (c_why, n_ctx != current.n_ctx),
            (a_why, admit != current.admit),
        )
        if moved
    ]
    holds = [why for why in (t_why, c_why, a_why) if why]
    reason = "; ".join(changes or holds) or "steady"
    return Decision(limits=limits, reason=reason, changed=limits != current)


def thread_bounds(cfg: GovernorConfig, facts: ModelFacts) -> tuple[int, int]:
    """The least and the most generation threads the policy may choose."""
    high = max(1, facts.thread_ceiling)
    if cfg.max_threads is not None:
        high = min(high, cfg.max_threads)
    low = min(max(cfg.min_threads, facts.min_threads, 1), high)
    return low, high


def _threads(
    history: Sequence[Snapshot],
    current: Limits,
    cfg: GovernorConfig,
    facts: ModelFacts,
    now: float,
) -> tuple[int, str]:
    low, high = thread_bounds(cfg, facts)
    cur = current.threads
    if cur > high:
        return high, f"threads {cur} -> {high}: above the ceiling {high}"
    if cur < low:
        return low, f"threads {cur} -> {low}: below the floor {low}"
    if not history:
        return cur, "no readings: hold threads"
    latest = history[-1]
    temp, flags = latest.cpu_temp_c, latest.throttle
    soft, hard = _temps(cfg)
    down_at = soft - cfg.temp_band_c
    up_below = down_at - cfg.hysteresis_c
    wait = current.threads_changed_at + cfg.hysteresis_s - now

    if temp is not None and temp >= hard:
        # Past the hard limit there is no waiting: the firmware is about to act for us.
        if cur > low:
            return low, f"cpu {temp:.1f} °C ≥ hard {hard:g}: threads {cur} -> {low}"
        return cur, f"cpu {temp:.1f} °C ≥ hard {hard:g}: at the floor {low}"
    hot = None
    if temp is not None and temp >= down_at:
        hot = f"cpu {temp:.1f} °C ≥ soft {soft:g} - {cfg.temp_band_c:g}"
    elif flags is not None and flags.thermal_now:
        hot = f"firmware throttling ({flags})"
    if hot is not None:
        if cur <= low:
            return cur, f"{hot}: at the floor {low}"
        if wait > 0:
            return cur, f"{hot}: next step in {wait:.0f} s"
        slope = _slope([s for s in history if s.t >= current.threads_changed_at])
        if slope is not None and slope <= -FALLING_C_PER_S:
            return cur, f"{hot}, falling {slope * 60:.1f} °C/min: hold threads"
        return cur - 1, f"{hot}: threads {cur} -> {cur - 1}"
    if temp is None:
        return cur, "temperature unknown: hold threads"
    # Step up only when every reading of the last window was cool: one cool sample between hot
    # ones is noise, not room.
    recent = [s for s in history if s.t >= now - cfg.hysteresis_s] or [latest]
    temps = [s.cpu_temp_c for s in recent]
    cool = all(t is not None and t < up_below for t in temps) and not any(
        s.throttle is not None and s.throttle.thermal_now for s in recent
    )
    if not cool or cur >= high:
        return cur, ""
    if wait > 0:
        return cur, f"cpu {temp:.1f} °C cool: next step up in {wait:.0f} s"
    why = f"cpu {temp:.1f} °C < {up_below:g} for {cfg.hysteresis_s:g} s"
    return cur + 1, f"{why}: threads {cur} -> {cur + 1}"


def _slope(readings: Sequence[Snapshot]) -> float | None:
    """The least-squares temperature trend in °C/s, or None with too few readings to tell."""
    points = [(s.t, s.cpu_temp_c) for s in readings if s.cpu_temp_c is not None]
    if len(points) < 3 or points[-1][0] - points[0][0] < 2.0:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_c = sum(c for _, c in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (c - mean_c) for t, c in points) / spread


def _temps(cfg: GovernorConfig) -> tuple[float, float]:
    soft = cfg.soft_temp_c if cfg.soft_temp_c is not None else boards.GENERIC.soft_temp_c
    hard = cfg.hard_temp_c if cfg.hard_temp_c is not None else boards.GENERIC.hard_temp_c
    return soft, hard


def ctx_bounds(cfg: GovernorConfig, facts: ModelFacts) -> tuple[int, int]:
    """The smallest and the largest context length the policy may choose."""
    high = cfg.ctx_max if cfg.ctx_max is not None else facts.n_ctx_train
    if facts.n_ctx_train > 0:
        high = min(high, facts.n_ctx_train)
    return min(cfg.ctx_min, high), high


def largest_fitting(low: int, high: int, kv_per_token: int, budget: float) -> int | None:
    """The largest context in [low, high] (a multiple of 256, or an end) whose KV fits budget."""
    if kv_per_token <= 0:
        return high
    most = math.floor(budget / kv_per_token)
    if most >= high:
        return high
    stepped = most // CTX_STEP * CTX_STEP
    if stepped >= low:
        return stepped
    return low if most >= low else None


# model.n_ctx auto: never more than this at start (a 128k-token model would otherwise take
# gigabytes of KV cache for prompts that never come). Home Assistant's Assist prompt with 25
# tools and a long answer takes about 6k. A request's num_ctx may grow it further.
AUTO_CTX_MAX = 16384


def ctx_max_of(cfg: Any) -> int:
    """The context the governor may grow to by default: model.n_ctx, or the auto cap."""
    return int(cfg.model.n_ctx or AUTO_CTX_MAX)


def start_context(n_ctx_train: int, kv_per_token: int, headroom: int | None, margin: int) -> int:
    """The context to load with when model.n_ctx is auto: the model's training length, at most
    AUTO_CTX_MAX, as large as the memory free now allows while twice the margin stays free
    (as _context aims for); 512 at least."""
    high = min(n_ctx_train or AUTO_CTX_MAX, AUTO_CTX_MAX)
    low = min(512, high)
    if headroom is None:
        return high
    fit = largest_fitting(low, high, kv_per_token, headroom - 2 * margin)
    return fit if fit is not None else low


def _context(
    latest: Snapshot | None,
    current: Limits,
    cfg: GovernorConfig,
    facts: ModelFacts,
    now: float,
) -> tuple[int, str]:
    low, high = ctx_bounds(cfg, facts)
    cur = current.n_ctx
    headroom = latest.mem_headroom if latest is not None else None
    kv = facts.kv_bytes_per_token
    if headroom is None or kv <= 0:
        if cur > high or cur < low:
            new = min(max(cur, low), high)
            return new, f"n_ctx {cur} -> {new}: outside [{low}, {high}]"
        return cur, "memory unknown: hold context" if headroom is None else ""
    margin = (cfg.mem_margin_mb or 0) * MIB
    # A rebuild frees the KV cache now allocated, so it counts as available to the new one.
    # Aim for a context that leaves twice the margin free; act only once less than one margin
    # is left (or room for more has stayed): the gap between the two keeps noise from causing
    # a shrink-grow cycle.
    fit = largest_fitting(low, high, kv, headroom + kv * cur - 2 * margin)
    target = fit if fit is not None else low
    mib = f"{headroom / MIB:.0f} MiB"
    since = now - current.ctx_changed_at
    if not low <= cur <= high:
        return target, f"n_ctx {cur} -> {target}: outside [{low}, {high}]"
    if headroom < margin:  # the context in force no longer fits with its margin
        why = f"memory: headroom {mib} < margin {margin / MIB:.0f} MiB"
        if since < cfg.ctx_hold_s and cur > low:
            # Still short soon after a rebuild: memory is draining, so go to the floor at once
            # rather than rebuild every reading.
            return low, f"{why} {since:.0f} s after a rebuild: n_ctx {cur} -> {low}"
        if target >= cur:
            return cur, f"{why}, even at n_ctx {low}"
        return target, f"{why}: n_ctx {cur} -> {target}"
    if target <= cur:
        return cur, ""
    if since < cfg.ctx_hold_s:
        # Growing is never urgent and each rebuild stalls requests.
        return cur, f"memory: room for n_ctx {target}: grow in {cfg.ctx_hold_s - since:.0f} s"
    return target, f"memory: headroom {mib}: n_ctx {cur} -> {target}"


def _admission(latest: Snapshot | None, current: Limits, cfg: GovernorConfig) -> tuple[bool, str]:
    headroom = latest.mem_headroom if latest is not None else None
    if headroom is None:
        return current.admit, ""
    critical = cfg.critical_mb * MIB
    mib = f"{headroom / MIB:.0f} MiB"
    if current.admit and headroom < critical:
        return False, f"memory: headroom {mib} < critical {cfg.critical_mb} MiB: admission off"
    if not current.admit:
        # Resume only at twice the critical level, so one freed page does not flip it back.
        if headroom >= 2 * critical:
            return True, f"memory: headroom {mib} ≥ twice critical: admission on"
        return False, f"memory: headroom {mib}: admission still off"
    return True, ""


def kv_bytes_per_token(
    metadata: Mapping[str, str], type_k: str | int = "f16", type_v: str | int = "f16"
) -> int:
    """KV-cache bytes per token of context, from the GGUF metadata and the cache types.

    n_layer * n_head_kv * (key_length * size(type_k) + value_length * size(type_v)), what
    llama.cpp allocates for a full-attention model. For sliding-window models (Gemma 3) it is
    an upper bound: with swa_full=False llama.cpp keeps only the window on the SWA layers.
    Raises ValueError when the metadata lacks what is needed (e.g. a recurrent model).
    """
    arch = metadata.get("general.architecture")
    if not arch:
        raise ValueError("GGUF metadata has no general.architecture")

    def number(key: str, default: int | None = None) -> int:
        raw = metadata.get(f"{arch}.{key}")
        if raw is None:
            if default is None:
                raise ValueError(f"GGUF metadata has no {arch}.{key}")
            return default
        try:
            return int(raw)
        except ValueError:  # a per-layer array: not a model this formula describes
            raise ValueError(f"GGUF metadata {arch}.{key} is not a number: {raw[:40]}") from None

    n_layer = number("block_count")
    n_head = number("attention.head_count")
    n_head_kv = number("attention.head_count_kv", n_head)
    n_embd = number("embedding_length")
    key_length = number("attention.key_length", n_embd // max(n_head, 1))
    value_length = number("attention.value_length", n_embd // max(n_head, 1))
    per_token = (
        n_layer
        * n_head_kv
        * (key_length * _element_size(type_k) + value_length * _element_size(type_v))
    )
    return math.ceil(per_token)


def _element_size(cache_type: str | int) -> Fraction:
    name = GGML_TYPE_NAMES.get(cache_type, "") if isinstance(cache_type, int) else cache_type
    try:
        return BYTES_PER_ELEMENT[name.lower()]
    except KeyError:
        raise ValueError(f"unknown KV cache type {cache_type!r}") from None


def kv_state_budget(headroom: int | None, held: int, cfg: GovernorConfig, ceiling: int) -> int:
    """Bytes the saved KV states of sessions may hold: the configured ceiling, less when memory
    is short (half of what would be free above twice the margin if none were held), the ceiling
    when memory is unknown. The engine drops the least recently used states to fit."""
    if headroom is None:
        return ceiling
    spare = headroom + held - 2 * (cfg.mem_margin_mb or 0) * MIB
    return max(0, min(ceiling, spare // 2))
