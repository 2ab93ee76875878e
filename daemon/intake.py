"""What every front door does with a parsed Request before it becomes a queued Job.

A front door (MQTT today; HTTP and Wyoming next) parses its protocol into a Request and hands it
over with its Answers: intake applies the client allow-list, the duplicate window, the rate
limit and the memory admission, submits the job to the engine, and answers each refusal. It also
writes the one log line per request, whoever ends the request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from daemon.config import Config
from daemon.engine import DuplicateId, Engine, WouldMissDeadline
from daemon.requests import Done, ErrorCode, Job, QueueFull, Rejection, Request
from daemon.safeguards.dedupe import Key, RecentRequests
from daemon.safeguards.policy import client_allowed
from daemon.safeguards.ratelimit import RateLimiter
from daemon.sessions.store import SessionKey

log = structlog.get_logger(__name__)

# An error reply for a request that never ran says so (the protocol promises text and usage).
# A busy answer's retry hint (HTTP Retry-After) when nothing better is known: the openai SDK
# retries at once without one.
RETRY_AFTER_S = 5.0
NOTHING = {"usage": {"prompt_tokens": 0, "completion_tokens": 0}, "text": ""}


class Answers(Protocol):
    """A front door's replies, in its own wire format; done/error return the bytes sent."""

    def delta(self, request: Request, seq: int, text: str) -> None: ...

    def done(self, request: Request, done: Done) -> bytes: ...

    def error(self, request: Request, code: ErrorCode, message: str, extra: dict) -> bytes: ...

    def again(self, request: Request, payload: bytes) -> None:
        """Send a remembered terminal reply to this copy's reply address (a duplicate)."""

    def refuse(self, rejection: Rejection) -> None:
        """Answer a request that never became a job."""


def log_request(
    rid: str | None,
    client: str,
    outcome: str,
    *,
    detail: str | None = None,
    done: Done | None = None,
    usage: dict[str, Any] | None = None,
    request: Request | None = None,
    log_prompts: bool = False,
) -> None:
    """The one log line per request, whatever ended it (a reply, an error, a refusal)."""
    fields: dict[str, Any] = {"id": rid, "client": client, "outcome": outcome}
    if detail is not None:
        fields["detail"] = detail
    if done is not None:
        fields.update(
            finish=done.finish_reason,
            prompt_tokens=done.usage.prompt_tokens,
            completion_tokens=done.usage.completion_tokens,
            queue_ms=round(done.timings.queue_ms, 1),
            ttft_ms=round(done.timings.ttft_ms, 1),
            total_ms=round(done.timings.total_ms, 1),
            tokens_per_s=round(done.timings.tokens_per_s, 1),
        )
        if "session" in done.notes:  # how much history it had, and what came from the cache
            fields["session"] = done.notes["session"]
    if usage is not None:
        fields["usage"] = usage
    if request is not None:
        fields["stream"] = str(request.stream)
        if log_prompts:
            fields["prompt"] = request.prompt or [m.content for m in request.messages or ()]
            if done is not None:
                fields["reply"] = done.text
    log.info("request", **fields)


class _Ledger:
    """One job's ReplySink: passes replies to the front door and keeps intake's books.

    The terminal reply is remembered for duplicates of the request (dedupe), its generated tokens
    are charged to the client's rate limit, and the request's log line is written.
    """

    def __init__(self, intake: Intake, answers: Answers, key: Key):
        self._intake = intake
        self._answers = answers
        self._key = key

    def delta(self, request: Request, seq: int, text: str) -> None:
        self._answers.delta(request, seq, text)

    def done(self, request: Request, done: Done) -> None:
        intake = self._intake
        intake.recent.finish(self._key, self._answers.done(request, done))
        intake.limiter.charge_tokens(request.client, done.usage.completion_tokens)
        intake.counters["done"] += 1
        log_request(
            request.id,
            request.client,
            "done",
            done=done,
            request=request,
            log_prompts=intake.cfg.logging.log_prompts,
        )

    def error(self, request: Request, code: ErrorCode, message: str, extra: dict) -> None:
        intake = self._intake
        payload = self._answers.error(request, code, message, extra)
        if code in (ErrorCode.BUSY, ErrorCode.RATE_LIMITED):
            intake.recent.forget(self._key)  # not run: a retry must be able to run
        else:
            intake.recent.finish(self._key, payload)
        usage = extra.get("usage") or {}
        if usage.get("completion_tokens"):
            intake.limiter.charge_tokens(request.client, usage["completion_tokens"])
        intake.counters[str(code)] += 1
        log_request(
            request.id,
            request.client,
            str(code),
            detail=message,
            usage=extra.get("usage"),
            request=request,
            log_prompts=intake.cfg.logging.log_prompts,
        )


class Intake:
    """The checks between a front door and the engine, the same for every front door."""

    def __init__(
        self,
        cfg: Config,
        engine: Engine | None,
        counters: Counter,
        memory_ok: Callable[[], bool],
    ):
        self.cfg = cfg
        self.engine = engine
        self.counters = counters
        # The governor's memory admission: False refuses before the kernel's OOM killer decides.
        self._memory_ok = memory_ok
        self.recent = RecentRequests(cfg.limits.dedupe_window_s)
        self.limiter = RateLimiter(cfg.policy.rate_limit)
        self.accepting = False
        # The model slot's word (daemon/slot.py): why not now and when to retry, or None.
        self.gate: Callable[[], tuple[str, float] | None] = lambda: None

    def reconfigure(self, cfg: Config) -> None:
        """A reload: the allow-list, the rate limit and the duplicate window follow the config."""
        self.cfg = cfg
        self.limiter.reconfigure(cfg.policy.rate_limit)
        self.recent.window_s = cfg.limits.dedupe_window_s

    def take(self, req: Request, answers: Answers) -> None:
        """Queue a parsed request, or answer why not (every path ends in one terminal reply)."""
        if not client_allowed(self.cfg.policy.clients_allowed, req.client):
            answers.refuse(
                Rejection(ErrorCode.POLICY, "this client may not ask this node", req.id, req.reply)
            )
            return
        key = (req.client, req.id)
        seen = self.recent.check(key)
        if seen is not None:
            self.counters["duplicate"] += 1
            if seen.payload is not None:
                # Finished: the same terminal reply again, to this copy's address.
                answers.again(req, seen.payload)
            log.info("request_duplicate", id=req.id, client=req.client, finished=bool(seen.payload))
            return
        self.recent.begin(key)
        self._admit(Job(req, _Ledger(self, answers, key)), answers)

    def _admit(self, job: Job, answers: Answers) -> None:
        req = job.request
        if not self.accepting:
            job.finish_error(
                ErrorCode.BUSY,
                "the daemon is not accepting requests right now",
                {"retry_after_s": RETRY_AFTER_S},
            )
            return
        closed = self.gate()
        if closed is not None:
            job.finish_error(
                ErrorCode.BUSY, closed[0], {"reason": "model", "retry_after_s": closed[1]}
            )
            return
        retry_after = self.limiter.admit(req.client)
        if retry_after is not None:
            job.finish_error(
                ErrorCode.RATE_LIMITED,
                "too many requests from this client; slow down",
                {"retry_after_s": round(retry_after, 2)},
            )
            return
        if not self._memory_ok():
            job.finish_error(
                ErrorCode.BUSY,
                "memory is critically low; try again later",
                {"reason": "memory", "retry_after_s": RETRY_AFTER_S},
            )
            return
        engine = self.engine  # None only while the model slot has no model (gate() said so)
        try:
            if engine is None:
                raise QueueFull
            engine.submit(job)
        except QueueFull:
            job.finish_error(
                ErrorCode.BUSY,
                f"queue is full ({self.cfg.limits.queue_size} waiting); try again later",
                {"queue_depth": engine and engine.queue_depth, "retry_after_s": self._backlog()},
            )
        except WouldMissDeadline as err:
            job.finish_error(
                ErrorCode.TIMEOUT,
                f"would not finish before its deadline (estimated wait {err.wait_s:.1f} s)",
                {"estimated_wait_s": round(err.wait_s, 2), **NOTHING},
            )
        except DuplicateId:
            # This client's request of this id still runs (the duplicate window has passed):
            # not this job's reply to give.
            self.recent.forget((req.client, req.id))
            answers.refuse(
                Rejection(
                    ErrorCode.BAD_REQUEST,
                    "a request with this id is already queued or running",
                    req.id,
                    req.reply,
                    req.client,
                )
            )

    def _backlog(self) -> float:
        """Seconds until the queue has room again, as well as the engine can tell."""
        backlog = self.engine.backlog_s() if self.engine is not None else None
        return round(backlog, 2) if backlog else RETRY_AFTER_S

    def cancel(self, rid: str, client: str) -> None:
        """Cancel a request of this client's (a client cancels only its own)."""
        found = self.engine is not None and self.engine.cancel(rid, client)
        log.info("cancel", id=rid, client=client, found=found)

    def reset_session(self, client: str, session: str) -> None:
        """Forget a client's session: its turns and any saved KV state (a client resets only
        its own: sessions are keyed by client)."""
        if not client_allowed(self.cfg.policy.clients_allowed, client):
            log.warning("session_reset_refused", client=client)
            return
        found = self.engine is not None and self.engine.memory.reset(SessionKey(client, session))
        log.info("session_reset", client=client, found=found)
