"""One request's run on the loaded model: checks, prompt, the token loop, the terminal reply."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.config import GenerationConfig
from daemon.engine import history, kvstates, llama_compat, structured
from daemon.engine.kvstates import KvStates
from daemon.engine.prompt import Prompter, Refused
from daemon.engine.reasoning import ReasoningSplitter
from daemon.engine.textstream import SentenceChunker, StopMatcher
from daemon.engine.tools import CallGate, call_dicts, find_calls, offered, offered_names
from daemon.requests import ChatMessage, Done, ErrorCode, Job, StreamMode, Timings, ToolCall, Usage
from daemon.safeguards.policy import TermFilter

# llama.cpp reads this seed as "pick a random one".
_RANDOM_SEED = 0xFFFFFFFF
# What a cancelled or timed-out reply says was generated when nothing was (the protocol
# promises `text` and `usage` on those errors).
NOTHING_YET = {"usage": {"prompt_tokens": 0, "completion_tokens": 0}, "text": ""}


@dataclass(frozen=True)
class Measured:
    """The speeds one generation showed, for the engine's running averages (admission)."""

    tokens_per_s: float  # decode after the first token; 0 when too short to say
    prefill_per_s: float | None  # None when too few fresh prompt tokens to say
    tokens: int = 0  # tokens generated
    fresh: int = 0  # prompt tokens evaluated (not taken from the cache)


def common_prefix(cached: Any, tokens: list[int]) -> int:
    """How many leading tokens llama-cpp-python's generate() will reuse from the KV cache."""
    return min(kvstates.common_length(cached, tokens), len(tokens) - 1)


class Generation:
    """Runs one job to exactly one terminal reply; on_token(now) is called after each token."""

    def __init__(
        self,
        job: Job,
        llm: Any,
        prompter: Prompter,
        gen: GenerationConfig,
        max_new: int,
        clock: Callable[[], float],
        on_token: Callable[[float], None],
        memory: history.SessionMemory | None = None,
    ):
        self.job = job
        self.req = job.request
        self._llm = llm
        self._prompter = prompter
        self._gen = gen
        self._max_new = max_new
        self._clock = clock
        self._on_token = on_token
        self._stops = StopMatcher(self.req.stop)
        self._terms = TermFilter(prompter.policy.blocked_terms)
        self._chunker = SentenceChunker() if self.req.stream is StreamMode.SENTENCES else None
        streams = self.req.stream is not StreamMode.OFF
        self._gate = CallGate() if streams and offered(self.req) else None  # tools: hold a call
        self._reasoning = ReasoningSplitter()  # a <think> block never reaches the reply
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self._notes: dict[str, Any] = {}
        self._seq = 0
        interval = self.req.stream_interval_ms
        self._interval_s = (gen.stream_interval_ms if interval is None else interval) / 1000
        self._held_delta = ""  # streamed text not yet sent (coalescing)
        self._last_delta_at = float("-inf")
        self._now = 0.0
        self._n_out = 0
        self._first_at: float | None = None
        self._finish = "length"
        self._grammar: Any = None
        self._strict = False  # the grammar shapes the whole reply (JSON, a required call)
        memory = self._memory = memory or history.SessionMemory(None, KvStates(0))
        self._kv, self._sessions = memory.kv, memory.store
        self._fitted: history.Fitted | None = None
        self._calls: tuple[ToolCall, ...] = ()  # the reply's tool calls (recorded in a session)

    def run(self) -> Measured | None:
        """Generate and answer; the speeds measured, or None when it ended without a reply."""
        started = self._clock()
        self.job.started_at = started
        self._memory.after_turn(None)  # the cache is this job's now: nothing left to prime
        if not self._still_wanted(started):
            return None
        tokens = self._prompt()
        if tokens is None or not self._compile_schema():
            return None
        max_new = self._room(len(tokens))
        if max_new is None:
            return None
        self._kv.prepare(self._llm, self._fitted.key if self._fitted else None, tokens)
        self._seed()
        # What the prompt costs: the tokens not already in the KV cache (for admission estimates).
        fresh = len(tokens) - common_prefix(llama_compat.cached_tokens(self._llm), tokens)
        gen_at = self._clock()
        outcome = self._loop(tokens, max_new)
        usage = {"prompt_tokens": len(tokens), "completion_tokens": self._n_out}
        if outcome is not None:
            self._send_held()
            self.job.finish_error(outcome[0], outcome[1], {"usage": usage, "text": self.text})
            return None
        return self._answer(len(tokens), started, fresh, gen_at)

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def _still_wanted(self, started: float) -> bool:
        """False (and answered) when the job was cancelled or timed out while it waited."""
        if self.job.cancelled.is_set() or self.job.finished:
            self.job.finish_error(ErrorCode.CANCELLED, "cancelled before it started", NOTHING_YET)
            return False
        if started > self.req.deadline:
            self.job.finish_error(
                ErrorCode.TIMEOUT, "deadline passed while waiting in the queue", NOTHING_YET
            )
            return False
        return True

    def _tokens(self) -> list[int] | None:
        """The prompt tokens, or None (and answered) when the policy or the template refuses."""
        req = self.req
        refused = self._prompter.check_request(req)
        if refused is not None:
            self.job.finish_error(refused.code, refused.message, NOTHING_YET)
            return None
        try:
            if req.session is None:
                return self._prompter.encode(req.prompt, req.messages, req.system)
            if self._sessions is None:
                raise Refused(ErrorCode.BAD_REQUEST, "sessions are off on this node")
            n_ctx = self._llm.n_ctx()
            self._fitted = history.fit(req, self._sessions, self._prompter, n_ctx, self._max_new)
            return self._fitted.tokens
        except Refused as rej:
            self.job.finish_error(rej.code, rej.message)
            return None

    def _prompt(self) -> list[int] | None:
        """The prompt tokens, the request's tools given to the chat template; None (and
        answered) when refused."""
        try:
            with self._prompter.offering(offered(self.req)):
                return self._tokens()
        except Refused as rej:
            self.job.finish_error(rej.code, rej.message, NOTHING_YET)
            return None

    def _compile_schema(self) -> bool:
        """The request's grammar (json_schema, grammar, or a required tool call); False (and
        answered) when it cannot be one."""
        try:
            prompter = self._prompter
            self._grammar = prompter.grammars.for_request(self.req, prompter.call_format)
            # A grammar that shapes the whole reply as JSON (not "text or a call": its text
            # branch is free, and wants the repeat penalty as any text does).
            req = self.req
            strict = req.json_schema is not None or req.grammar is not None
            self._strict = strict or req.tool_choice == "required"
        except structured.SchemaError as err:
            self.job.finish_error(err.code, str(err), NOTHING_YET)
            return False
        return True

    def _room(self, n_prompt: int) -> int | None:
        """Tokens this reply may have, or None (and answered) when the prompt fills the context."""
        n_ctx = self._llm.n_ctx()
        room = n_ctx - n_prompt
        if room < 1:
            self.job.finish_error(
                ErrorCode.TOO_LONG,
                f"prompt is {n_prompt} tokens; the context holds {n_ctx}",
                {"usage": {"prompt_tokens": n_prompt, "completion_tokens": 0}},
            )
            return None
        wanted = self.req.max_tokens or self._gen.max_tokens
        max_new = min(self._max_new, room)
        if max_new < wanted:
            reason = "context" if max_new == room else "limit"
            self._notes["max_tokens"] = {"requested": wanted, "used": max_new, "reason": reason}
        return max_new

    def _seed(self) -> None:
        if self.req.seed is not None:
            # Reusing a cached prefix changes the logits' rounding (batch vs. single-token
            # kernels), so a seeded request evaluates its prompt afresh: same seed, same text.
            self._llm.reset()
            self._llm.set_seed(self.req.seed)
        else:
            self._llm.set_seed(_RANDOM_SEED)

    def _emit(self, text: str) -> None:
        text = self._reasoning.feed(text)
        if not text:
            return
        self._parts.append(text)
        if self._gate is not None:
            text = self._gate.feed(text)  # a reply that may be a tool call waits
        self._stream(text)

    def _emit_rest(self, text: str) -> None:
        """What the reasoning splitter held back at the end (it is reply text, not reasoning)."""
        if text:
            self._parts.append(text)
            self._stream(self._gate.feed(text) if self._gate is not None else text)
        if self.req.think is not False and self._reasoning.thinking:
            self._notes["thinking"] = self._reasoning.thinking

    def _stream(self, text: str) -> None:
        if not text:
            return
        if self.req.stream is StreamMode.TOKENS:
            # Coalesced: a listener gets at most one delta per interval, not one per token.
            self._held_delta += text
            if self._now - self._last_delta_at >= self._interval_s:
                self._send_held()
        elif self._chunker is not None:
            for sentence in self._chunker.feed(text):
                self._delta(sentence)

    def _send_held(self) -> None:
        if self._held_delta:
            self._delta(self._held_delta)
            self._held_delta = ""
            self._last_delta_at = self._now

    def _delta(self, text: str) -> None:
        self.job.sink.delta(self.req, self._seq, text)
        self._seq += 1

    def _loop(self, tokens: list[int], max_new: int) -> tuple[ErrorCode, str] | None:
        """The token loop; an (error code, message) when it must end in an error reply."""
        import llama_cpp

        req, llm, gen = self.req, self._llm, self._gen
        temp = req.temperature if req.temperature is not None else gen.temperature
        top_p = req.top_p if req.top_p is not None else gen.top_p
        vocab = llama_compat.vocab(llm)
        stream = llm.generate(
            tokens,
            top_k=gen.top_k,
            top_p=top_p,
            temp=temp,
            # JSON repeats its quotes and braces by design: a repeat penalty keeps a small model
            # from closing a string (seen: "kitchen light } A kitchen light is ..." to the limit).
            repeat_penalty=gen.repeat_penalty if not self._strict else 1.0,
            grammar=self._grammar,
        )
        try:
            for token in stream:
                self._now = now = self._clock()
                if self._first_at is None:
                    self._first_at = now
                self._on_token(now)
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    self._finish = "stop"
                    return None
                self._n_out += 1
                piece = self._decoder.decode(llm.detokenize([token]))
                self._emit(self._terms.feed(self._stops.feed(piece)))
                outcome = self._verdict(now, max_new)
                if outcome != "go on":
                    return outcome if isinstance(outcome, tuple) else None
        finally:
            stream.close()
            llama_compat.release_sampler(llm)
        return None

    def _verdict(self, now: float, max_new: int) -> tuple[ErrorCode, str] | str:
        """After a token: "go on", "end" (a done reply) or an (error code, message)."""
        if self._terms.blocked:
            return (ErrorCode.POLICY, "the reply was stopped by this node's policy")
        if self._stops.stopped:
            self._finish = "stop"
            return "end"
        if self._n_out >= max_new:
            return "end"
        if self.job.cancelled.is_set():
            return (ErrorCode.CANCELLED, "cancelled")
        if now > self.req.deadline:
            return (ErrorCode.TIMEOUT, "deadline passed during generation")
        return "go on"

    def _answer(self, n_prompt: int, started: float, fresh: int, gen_at: float) -> Measured | None:
        """Flush what is held back, apply the reply policy, send `done`; the speeds measured."""
        end = self._clock()
        self._emit(self._terms.feed(self._stops.feed(self._decoder.decode(b"", final=True))))
        self._emit(self._terms.feed(self._stops.flush()))
        if not self._terms.blocked:
            self._emit(self._terms.flush())
        self._emit_rest(self._reasoning.flush())
        verdict = self._prompter.check_reply(self._terms, self.text)
        if verdict is not None:
            usage = {"prompt_tokens": n_prompt, "completion_tokens": self._n_out}
            self.job.finish_error(ErrorCode.POLICY, verdict, {"usage": usage, "text": ""})
            return None
        text = self._settle_calls()
        self._send_held()
        if self._chunker is not None:
            for sentence in self._chunker.flush():
                self._delta(sentence)
        timings = self._timings(started, end)
        if self.req.json_schema is not None:
            self._notes.update(structured.parsed(self.text))
        if self.req.stream is not StreamMode.OFF:
            self._notes["seq"] = self._seq
        turns = None
        if self._fitted is not None and self._sessions is not None:
            reply = ChatMessage("assistant", text, tool_calls=self._calls)
            turns = history.record(self._sessions, self._fitted, reply)
            self._notes["session"] = {
                "id": self._fitted.key.id,
                "messages": len(turns),
                "dropped": self._fitted.dropped,
                "cached_tokens": n_prompt - fresh,
            }
        first_at = self._first_at
        prefill = None
        if first_at is not None and fresh >= 16 and first_at > gen_at:
            prefill = fresh / (first_at - gen_at)
        self.job.finish_done(
            Done(
                text,
                self._finish,
                Usage(n_prompt, self._n_out, n_prompt - fresh),
                timings,
                self._notes,
            )
        )
        if turns is not None:
            self._memory.after_turn(self.req, turns)  # primed once the worker is idle
        return Measured(timings.tokens_per_s, prefill, self._n_out, fresh)

    def _settle_calls(self) -> str:
        """The reply's text outside its tool calls; the calls go in the notes (tools.py)."""
        if offered(self.req) is None:
            return self.text
        text, calls = find_calls(self.text, offered_names(self.req))
        self._calls = tuple(calls)
        if calls:
            self._finish = "tool_calls"
            self._notes["tool_calls"] = call_dicts(calls)
        if self._gate is not None:
            self._stream(self._gate.flush(was_call=bool(calls)))
        return text

    def _timings(self, started: float, end: float) -> Timings:
        received = self.req.received_at
        first = self._first_at if self._first_at is not None else end
        decode_s = end - first
        n_out = self._n_out
        return Timings(
            queue_ms=(started - received) * 1000,
            ttft_ms=(first - received) * 1000,
            total_ms=(end - received) * 1000,
            tokens_per_s=(n_out - 1) / decode_s if n_out > 1 and decode_s > 0 else 0.0,
        )
