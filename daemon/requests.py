"""The one internal contract between front doors and the engine.

A front door parses its protocol into a Request, gives a ReplySink for the answers, and intake
turns the pair into a Job on the engine's JobQueue. A Job ends in exactly one terminal reply.
Nothing here knows MQTT, HTTP or llama.cpp.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Protocol

# A session id, the same on every front door: also a topic level (.../session/<id>/reset), so
# no '/', '+' or '#'.
SESSION_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class ErrorCode(StrEnum):
    """Stable error codes of the public protocol (docs/PROTOCOL.md)."""

    BAD_REQUEST = "bad_request"
    TOO_LONG = "too_long"
    BUSY = "busy"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    INTERNAL = "internal"
    RATE_LIMITED = "rate_limited"
    POLICY = "policy"


class Priority(IntEnum):
    """Queue order: interactive requests (voice, a person waiting) run before background ones."""

    INTERACTIVE = 0
    BACKGROUND = 1


class StreamMode(StrEnum):
    OFF = "off"
    TOKENS = "tokens"
    SENTENCES = "sentences"


@dataclass(frozen=True)
class ReplyAddress:
    """Where a request's replies go, and the MQTT v5 correlation data to echo."""

    topic: str
    correlation: bytes | None = None
    # The MQTT QoS of `delta` messages (None: the node's mqtt.delta_qos); terminal replies
    # always go at mqtt.reply_qos.
    delta_qos: int | None = None


@dataclass(frozen=True)
class ToolCall:
    """A call of a tool the request offered: the model's choice of function and arguments."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system, user, assistant, or tool (a tool's result)
    content: str
    # An assistant turn's tool calls; a tool turn's answer names the call it answers.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class Request:
    """A validated request, ready for the engine."""

    id: str
    reply: ReplyAddress
    messages: tuple[ChatMessage, ...] | None
    prompt: str | None
    system: str | None
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...]
    seed: int | None
    stream: StreamMode
    received_at: float
    deadline: float
    priority: Priority = Priority.INTERACTIVE
    # Who asked: the topic level after .../request/ ('' on the plain request topic). Under the
    # shipped ACL the broker binds it to the user name, so rate limits and the allow-list hold.
    client: str = ""
    # Streamed tokens: at most one delta per this many ms (None: generation.stream_interval_ms;
    # 0: one per token). The first token always goes at once.
    stream_interval_ms: int | None = None
    # Structured output: the reply must match this JSON schema (a llama.cpp grammar enforces it).
    json_schema: dict[str, Any] | None = None
    # A conversation the node remembers (daemon/sessions): its stored turns come before this
    # request's prompt or messages, and the reply is added to them. Scoped to `client`.
    session: str | None = None
    # Structured output by a GBNF grammar of the client's own (checked in engine/gbnf.py).
    grammar: str | None = None
    # Tools the model may call: OpenAI-style function definitions (checked in engine/tools.py),
    # given to a chat template that takes them; the calls come back in done's tool_calls.
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: str = "auto"  # "auto" | "none" (tools not offered) | "required" (a grammar)
    # The context the client asks for (ollama's num_ctx): grown to, between jobs, as far as the
    # model and memory allow (engine/context.py); never shrunk for it.
    n_ctx: int | None = None
    # Reasoning models: True puts the reasoning text in done's `thinking`; False and None keep
    # it out of the reply. Never in `text`.
    think: bool | None = None


@dataclass(frozen=True)
class Rejection:
    """A request that cannot be accepted; reply is None when it named no reply address."""

    code: ErrorCode
    message: str
    id: str | None = None
    reply: ReplyAddress | None = None
    client: str = ""


def new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # of prompt_tokens, those the KV cache held: not evaluated again


@dataclass(frozen=True)
class Timings:
    """Milliseconds, except tokens_per_s (decode speed after the first token)."""

    queue_ms: float
    ttft_ms: float
    total_ms: float
    tokens_per_s: float


@dataclass(frozen=True)
class Done:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) | "length" | "tool_calls"
    usage: Usage
    timings: Timings
    notes: dict[str, Any] = field(default_factory=dict)


class ReplySink(Protocol):
    """Where a job's replies go. The engine knows nothing of MQTT; the service implements this."""

    def delta(self, request: Request, seq: int, text: str) -> None: ...

    def done(self, request: Request, done: Done) -> None: ...

    def error(self, request: Request, code: ErrorCode, message: str, extra: dict) -> None: ...


class Job:
    """One accepted request; finish() guarantees a single terminal reply whoever calls it."""

    def __init__(self, request: Request, sink: ReplySink):
        self.request = request
        self.sink = sink
        # Worst-case run time by the measured speeds (admission); None before any measurement.
        self.estimate_s: float | None = None
        self.started_at: float | None = None
        self.cancelled = threading.Event()
        self._finished = False
        self._lock = threading.Lock()

    @property
    def finished(self) -> bool:
        return self._finished

    def _claim(self) -> bool:
        with self._lock:
            if self._finished:
                return False
            self._finished = True
            return True

    def finish_done(self, done: Done) -> bool:
        """Send the `done` reply unless a terminal reply was already sent."""
        if not self._claim():
            return False
        self.sink.done(self.request, done)
        return True

    def finish_error(self, code: ErrorCode, message: str, extra: dict | None = None) -> bool:
        """Send an `error` reply unless a terminal reply was already sent."""
        if not self._claim():
            return False
        self.sink.error(self.request, code, message, extra or {})
        return True


class QueueFull(Exception):
    """The bounded queue has no room: the caller answers `busy`."""


def job_key(req: Request) -> tuple[str, str]:
    """A request's identity: ids are the client's own, so two clients may pick the same one."""
    return (req.client, req.id)


def is_request(job: Job, request_id: str, client: str | None) -> bool:
    """Whether job is the request of this id (and this client's, unless client is None)."""
    return job.request.id == request_id and client in (None, job.request.client)


class JobQueue:
    """A bounded queue of waiting jobs, lowest priority number first, then first come; jobs
    are found by (client, id)."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._heap: list[tuple[int, int, Job]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._by_id: dict[tuple[str, str], Job] = {}

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def put(self, job: Job) -> Job | None:
        """Queue a job or raise QueueFull; never blocks.

        When full, a job displaces the newest waiting job of a lower priority (a larger number),
        which is returned for the caller to answer `busy`.
        """
        with self._cond:
            displaced = None
            if len(self._heap) >= self.maxsize:
                worst = max(self._heap, key=lambda e: (e[0], e[1]), default=None)
                if worst is None or worst[0] <= int(job.request.priority):
                    raise QueueFull
                self._heap.remove(worst)
                heapq.heapify(self._heap)
                displaced = worst[2]
                self._by_id.pop(job_key(displaced.request), None)
            heapq.heappush(self._heap, (int(job.request.priority), next(self._seq), job))
            self._by_id[job_key(job.request)] = job
            self._cond.notify()
            return displaced

    def snapshot(self) -> list[Job]:
        """The waiting jobs in the order they will run."""
        with self._cond:
            return [j for _, _, j in sorted(self._heap, key=lambda e: (e[0], e[1]))]

    def remove_if(self, predicate: Callable[[Job], bool]) -> list[Job]:
        """Remove and return the waiting jobs for which predicate holds (expired deadlines)."""
        with self._cond:
            gone = [e for e in self._heap if predicate(e[2])]
            if gone:
                self._heap = [e for e in self._heap if not predicate(e[2])]
                heapq.heapify(self._heap)
                for _, _, j in gone:
                    self._by_id.pop(job_key(j.request), None)
            return [j for _, _, j in gone]

    def get(self, timeout: float) -> Job | None:
        """The next job, or None after timeout."""
        with self._cond:
            if not self._heap and not self._cond.wait_for(lambda: self._heap, timeout):
                return None
            _, _, job = heapq.heappop(self._heap)
            self._by_id.pop(job_key(job.request), None)
            return job

    def find(self, key: tuple[str, str]) -> Job | None:
        """The waiting job of this (client, id), if any."""
        with self._cond:
            return self._by_id.get(key)

    def take_out(self, request_id: str, client: str | None) -> Job | None:
        """Remove the waiting job of this id (and client, unless None): a cancel frees its
        place at once. None if no such job waits."""
        with self._cond:
            job = next((j for j in self._by_id.values() if is_request(j, request_id, client)), None)
            if job is not None:
                del self._by_id[job_key(job.request)]
                self._heap = [e for e in self._heap if e[2] is not job]
                heapq.heapify(self._heap)
            return job

    def drain(self) -> list[Job]:
        """Remove and return every waiting job (shutdown)."""
        with self._cond:
            jobs = [j for _, _, j in sorted(self._heap, key=lambda e: (e[0], e[1]))]
            self._heap.clear()
            self._by_id.clear()
            return jobs
