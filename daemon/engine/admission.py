"""Admission by estimate: how long a job will take, and how long a new one would wait.

Pure arithmetic over the engine's measured speeds. Until a speed has been measured there is
no estimate and every request is admitted (the deadline still drops it if it waits too long).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from daemon.config import GenerationConfig, LimitsConfig
from daemon.requests import Request

# Tokens per character of English text for the small BPE tokenizers edgellm ships (SmolLM2:
# ~4.2 characters a token on prose); an estimate, corrected by nothing but the deadline.
CHARS_PER_TOKEN = 4.0
# The chat template's framing (role headers, the default system prompt) in tokens.
TEMPLATE_TOKENS = 30


class DuplicateId(Exception):
    """A request with this id is already waiting or running."""


class WouldMissDeadline(Exception):
    """By the measured speeds, the request would not start before its deadline."""

    def __init__(self, wait_s: float):
        super().__init__(f"estimated wait {wait_s:.1f} s")
        self.wait_s = wait_s


@dataclass(frozen=True)
class Rates:
    """Measured prefill and decode speeds in tokens/s; None until measured."""

    prefill: float | None
    decode: float | None


def updated(rates: Rates, decode: float, prefill: float | None) -> Rates:
    """The running averages after one more generation (0 or None: not measured this time)."""
    return Rates(
        prefill=rates.prefill if prefill is None else _ema(rates.prefill, prefill),
        decode=rates.decode if decode <= 0 else _ema(rates.decode, decode),
    )


def _ema(avg: float | None, value: float) -> float:
    return value if avg is None else 0.7 * avg + 0.3 * value


def prompt_chars(request: Any) -> int:
    """Characters the request brings into the prompt."""
    n = len(request.prompt or "") + len(request.system or "")
    return n + sum(len(m.content) for m in request.messages or ())


def prompt_tokens(chars: int, n_ctx: int) -> float:
    """Estimated prompt tokens; never more than the context (a longer prompt is refused
    `too_long` at once and costs nothing)."""
    return min(chars / CHARS_PER_TOKEN + TEMPLATE_TOKENS, n_ctx)


def job_seconds(chars: int, max_tokens: int, rates: Rates, n_ctx: int) -> float | None:
    """Worst-case seconds a job runs: its prompt's prefill and all max_tokens decoded."""
    if not rates.prefill or not rates.decode:
        return None
    return prompt_tokens(chars, n_ctx) / rates.prefill + max_tokens / rates.decode


def prefill_seconds(chars: int, rates: Rates, n_ctx: int) -> float | None:
    """Seconds until a job's first token once it starts."""
    if not rates.prefill:
        return None
    return prompt_tokens(chars, n_ctx) / rates.prefill


def wait_seconds(
    job: Any, current: Any, waiting: Iterable[Any], now: float, rates: Rates, n_ctx: int
) -> float | None:
    """Seconds until job would produce its first token: what runs now, what is queued ahead
    of it (lower or equal priority number), and its own prefill. None: no estimate yet."""
    own = prefill_seconds(prompt_chars(job.request), rates, n_ctx)
    if own is None:
        return None
    total = own
    if current is not None and current.estimate_s is not None:
        started = current.started_at if current.started_at is not None else now
        total += max(0.0, current.estimate_s - (now - started))
    for other in waiting:
        if other.request.priority <= job.request.priority and other.estimate_s is not None:
            total += other.estimate_s
    return total


def backlog_seconds(current: Any, waiting: Iterable[Any], now: float) -> float | None:
    """Seconds until a job queued now could start: what runs now and everything waiting.
    0 when idle; None when something runs or waits that has no estimate yet."""
    total = 0.0
    if current is not None:
        if current.estimate_s is None:
            return None
        started = current.started_at if current.started_at is not None else now
        total += max(0.0, current.estimate_s - (now - started))
    for other in waiting:
        if other.estimate_s is None:
            return None
        total += other.estimate_s
    return total


def max_new(req: Request, gen: GenerationConfig, limits: LimitsConfig) -> int:
    """The most tokens a request may generate: its max_tokens (or the default), clamped."""
    return int(min(req.max_tokens or gen.max_tokens, limits.max_tokens))


def estimate(
    req: Request, gen: GenerationConfig, limits: LimitsConfig, rates: Rates, n_ctx: int
) -> float | None:
    """job_seconds of a request: its prompt's length and the most tokens it may ask for."""
    return job_seconds(prompt_chars(req), max_new(req, gen, limits), rates, n_ctx)
