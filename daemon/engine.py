"""The only owner of llama_cpp.Llama: one worker thread loads the model and runs every request."""

from __future__ import annotations

import codecs
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from daemon import admission, llama_compat
from daemon.config import GenerationConfig, LimitsConfig, ModelConfig, PolicyConfig
from daemon.requests import (
    ChatMessage,
    Done,
    ErrorCode,
    Job,
    JobQueue,
    QueueFull,
    StreamMode,
    Timings,
    Usage,
)
from daemon.safeguards.policy import Classifier, TermFilter, compose_system
from daemon.textstream import SentenceChunker, StopMatcher

log = structlog.get_logger(__name__)

# llama.cpp reads this seed as "pick a random one".
_RANDOM_SEED = 0xFFFFFFFF
_POLL_S = 0.5
# What a cancelled or timed-out reply says was generated when nothing was (the protocol
# promises `text` and `usage` on those errors).
_NOTHING_YET = {"usage": {"prompt_tokens": 0, "completion_tokens": 0}, "text": ""}
# Faults in a row after which the worker gives up: the daemon goes offline and systemd restarts
# it with a fresh process (a fault loop would otherwise answer `internal` forever).
_MAX_FAULTS = 3


class EngineError(Exception):
    """The engine cannot start or take work."""


class DuplicateId(Exception):
    """A request with this id is already waiting or running."""


class WouldMissDeadline(Exception):
    """By the measured speeds, the request would not start before its deadline."""

    def __init__(self, wait_s: float):
        super().__init__(f"estimated wait {wait_s:.1f} s")
        self.wait_s = wait_s


class _Rejected(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ModelInfo:
    """What the loaded model is, for the status message, the governor and the logs."""

    name: str
    path: str
    size_bytes: int
    n_ctx: int
    n_ctx_train: int
    n_threads: int
    n_threads_batch: int
    chat: bool
    metadata: dict[str, str]


@dataclass(frozen=True)
class SweepResult:
    """Decode tokens/s measured at each thread count, and the count chosen as the ceiling."""

    tokens_per_s: dict[int, float]
    best: int


def default_threads() -> int:
    """Physical cores: hyper-threads slow llama.cpp's decode rather than help it."""
    import psutil

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def _common_prefix(cached: Any, tokens: list[int]) -> int:
    """How many leading tokens llama-cpp-python's generate() will reuse from the KV cache."""
    n = 0
    for a, b in zip(cached, tokens, strict=False):
        if a != b:
            break
        n += 1
    return min(n, len(tokens) - 1)


class Engine:
    """Runs requests one at a time on the thread that owns the model."""

    def __init__(
        self,
        model_path: Path,
        model_name: str,
        model_cfg: ModelConfig,
        generation: GenerationConfig,
        limits: LimitsConfig,
        clock: Callable[[], float] = time.monotonic,
        repack: bool = False,
        policy: PolicyConfig | None = None,
        classifier: Classifier | None = None,
    ):
        self._path = model_path
        # Weight repacking (llama.cpp's extra buffer types): off unless the CPU probe said it
        # runs here (daemon/cpuprobe.py); off is always safe, only slower on some CPUs.
        self._repack = repack
        self._policy = policy or PolicyConfig()
        self._classifier = classifier
        self._name = model_name
        self._mcfg = model_cfg
        self._gen = generation
        self._limits = limits
        self._clock = clock
        self._queue = JobQueue(limits.queue_size)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="engine", daemon=True)
        self._current: Job | None = None
        self._lock = threading.Lock()
        self._llm: Any = None
        self._chat_format: Any = None
        self._add_bos = True
        self._bos_text = ""
        self.info: ModelInfo | None = None
        # Last time the worker proved it is alive (between jobs and between tokens).
        self.heartbeat = clock()
        # Limits asked for by other threads; the worker applies them at a safe point.
        self._want_threads: int | None = None
        self._want_ctx: int | None = None
        self.threads = 0
        self.n_ctx = 0
        self.tokens_per_s_avg: float | None = None
        self.prefill_per_s_avg: float | None = None
        # Set (with a reason) when the worker cannot go on: the service goes offline and exits.
        self.failure: str | None = None
        self.failed = threading.Event()
        self.sweep: SweepResult | None = None
        self._sweep_wanted = False

    # -- called from other threads -------------------------------------------------------------

    def start(self, timeout: float = 120.0, sweep_threads: bool = False) -> ModelInfo:
        """Start the worker, load the model on it, and wait until it is ready.

        With sweep_threads, the worker then measures decode speed at each thread count before
        it takes the first job; `sweep` holds the result once done.
        """
        self._sweep_wanted = sweep_threads
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EngineError(f"model did not load within {timeout:.0f} s")
        if self._load_error is not None:
            raise EngineError(f"cannot load model {self._path}: {self._load_error}")
        assert self.info is not None
        return self.info

    def submit(self, job: Job) -> None:
        """Queue a job; raises QueueFull (answer busy), DuplicateId or WouldMissDeadline.

        A full queue makes room for an interactive job by answering the newest background one
        `busy`.
        """
        req = job.request
        job.estimate_s = admission.job_seconds(
            admission.prompt_chars(req), self._max_new(req), self.rates(), self.n_ctx
        )
        with self._lock:
            current = self._current
            if (current is not None and current.request.id == req.id) or self._queue.find(req.id):
                raise DuplicateId(req.id)
            if self._stop.is_set() or self.failed.is_set():
                raise QueueFull
            wait = admission.wait_seconds(
                job, current, self._queue.snapshot(), self._clock(), self.rates(), self.n_ctx
            )
            if wait is not None and self._clock() + wait > req.deadline:
                raise WouldMissDeadline(wait)
            displaced = self._queue.put(job)
        if displaced is not None:
            displaced.finish_error(
                ErrorCode.BUSY,
                "the queue is full and an interactive request took this one's place",
                {"queue_depth": len(self._queue)},
            )

    def rates(self) -> admission.Rates:
        """Measured prefill and decode tokens/s (None until measured)."""
        return admission.Rates(self.prefill_per_s_avg, self.tokens_per_s_avg)

    def expire_waiting(self) -> int:
        """Answer `timeout` to every waiting job whose deadline has passed; how many."""
        now = self._clock()
        expired = self._queue.remove_if(lambda j: now > j.request.deadline)
        for job in expired:
            job.finish_error(
                ErrorCode.TIMEOUT, "deadline passed while waiting in the queue", _NOTHING_YET
            )
        return len(expired)

    def cancel(self, request_id: str, client: str | None = None) -> bool:
        """Stop a running generation between tokens, or answer a waiting one at once.

        With client, only a request of that client is cancelled.
        """
        with self._lock:
            job = (
                self._current if self._current and self._current.request.id == request_id else None
            )
            job = job or self._queue.find(request_id)
        if job is None or (client is not None and job.request.client != client):
            return False
        job.cancelled.set()
        if job is not self._current:
            job.finish_error(ErrorCode.CANCELLED, "cancelled before it started", _NOTHING_YET)
        return True

    def request_sweep(self) -> None:
        """Measure the thread counts again between jobs (SIGUSR1: after a change of cooling)."""
        self._sweep_wanted = True

    def set_limits(self, threads: int | None = None, n_ctx: int | None = None) -> None:
        """Ask for a new thread count (applied between tokens) or context length (between jobs)."""
        if threads is not None:
            self._want_threads = threads
        if n_ctx is not None:
            self._want_ctx = n_ctx

    def update_settings(
        self, generation: GenerationConfig, limits: LimitsConfig, policy: PolicyConfig | None = None
    ) -> None:
        """New request defaults, bounds and policy (a reload); the next job uses them."""
        self._gen = generation
        self._limits = limits
        if policy is not None:
            self._policy = policy
        self._queue.maxsize = limits.queue_size

    def native_limits(self) -> tuple[int, int]:
        """(threads, n_ctx) as llama.cpp itself reports them: proof that a change took effect."""
        return llama_compat.native_limits(self._llm)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return self._current is not None

    def stop(self, grace_s: float) -> None:
        """Refuse new work, let the running job finish within grace_s, then free the model."""
        self._stop.set()
        for job in self._queue.drain():
            job.finish_error(ErrorCode.CANCELLED, "the daemon is shutting down", _NOTHING_YET)
        deadline = time.monotonic() + grace_s
        while self._current is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        current = self._current
        if current is not None:
            current.cancelled.set()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            log.error("engine_stop_timeout")

    # -- the worker thread ------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._load()
        except Exception as err:  # reported through start()
            self._load_error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            self._serve()
        except BaseException as err:
            self._fail(f"the engine loop broke: {err!r}")
            raise
        finally:
            self._close()
            if not self._stop.is_set() and not self.failed.is_set():
                self._fail("the engine thread ended")

    def _serve(self) -> None:
        """Take jobs until stopped. A fault answers the job held `internal` and the loop goes
        on after a recovery; if recovery fails, or faults repeat, the engine fails for good."""
        faults = 0
        while not self._stop.is_set():
            try:
                self._step()
                faults = 0
            except Exception as err:
                faults += 1
                job = self._current
                log.exception(
                    "engine_fault", id=job.request.id if job else None, consecutive=faults
                )
                if job is not None:
                    job.finish_error(ErrorCode.INTERNAL, "internal error while generating")
                reason = self._recover(err, faults)
                if reason is not None:
                    self._fail(reason)
                    return
            finally:
                with self._lock:
                    self._current = None

    def _step(self) -> None:
        """One turn of the worker: beat, maybe sweep, take a job, apply limits, run it."""
        self._checkpoint("beat")
        self.heartbeat = self._clock()
        if self._sweep_wanted:
            # After READY (and between jobs), so start-up stays fast on slow boards; a request
            # that arrives meanwhile waits in the queue (its queue_ms says so).
            self._sweep_wanted = False
            self._checkpoint("sweep")
            try:
                self._sweep()
            except Exception:  # a failed measurement leaves the threads in place
                log.exception("thread_sweep_failed")
                self._llm.reset()
        job = self._queue.get(timeout=_POLL_S)
        with self._lock:
            self._current = job
        # Limits asked for while waiting apply before the next job starts.
        self._checkpoint("limits")
        self._apply_threads()
        self._apply_ctx()
        if job is None:
            return
        self._checkpoint("run")
        self._run(job)

    def _checkpoint(self, step: str) -> None:
        """A named seam: tests override it to inject a fault at each point of the loop."""

    def _recover(self, err: BaseException, faults: int) -> str | None:
        """Bring the model back to a known state after a fault; the reason if it cannot."""
        if faults >= _MAX_FAULTS:
            return f"{faults} faults in a row, the last: {err!r}"
        try:
            self._checkpoint("recover")
            if not llama_compat.context_alive(self._llm):
                # A fault inside a context rebuild leaves none: build one at the last size.
                llama_compat.rebuild_context(self._llm, self.n_ctx)
            self._llm.reset()  # the KV cache may hold a half-evaluated batch
            self._warm_up()
        except Exception as again:
            return f"cannot recover from {err!r}: {again!r}"
        log.info("engine_recovered", after=repr(err))
        return None

    def _fail(self, reason: str) -> None:
        """Give up: answer every waiting job and tell the service (it exits for a restart)."""
        if self.failed.is_set():
            return
        self.failure = reason
        log.error("engine_failed", reason=reason)
        self.failed.set()
        for job in self._queue.drain():
            job.finish_error(ErrorCode.INTERNAL, "the inference engine stopped", _NOTHING_YET)

    def _load(self) -> None:
        from llama_cpp import llama_chat_format

        t0 = time.monotonic()
        n_threads = self._mcfg.n_threads or default_threads()
        llm = llama_compat.load_llama(
            str(self._path),
            repack=self._repack,
            n_ctx=self._mcfg.n_ctx,
            n_threads=n_threads,
            n_threads_batch=max(n_threads, os.cpu_count() or 1),
            n_batch=self._mcfg.n_batch,
            n_gpu_layers=self._mcfg.n_gpu_layers,
            verbose=False,
        )
        llama_compat.check_internals(llm)
        template = self._mcfg.chat_template or llm.metadata.get("tokenizer.chat_template")
        eos_text = llama_compat.token_text(llm, llm.token_eos())
        self._bos_text = llama_compat.token_text(llm, llm.token_bos())
        self._add_bos = llama_compat.adds_bos(llm)
        if template:
            self._chat_format = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=eos_text, bos_token=self._bos_text
            )
        self._llm = llm
        self.info = ModelInfo(
            name=self._name,
            path=str(self._path),
            size_bytes=self._path.stat().st_size,
            n_ctx=llm.n_ctx(),
            n_ctx_train=llama_compat.n_ctx_train(llm),
            n_threads=llm.context_params.n_threads,
            n_threads_batch=llm.context_params.n_threads_batch,
            chat=template is not None,
            metadata=dict(llm.metadata),
        )
        self.threads = n_threads
        self.n_ctx = llm.n_ctx()
        load_ms = (time.monotonic() - t0) * 1000
        warm_ms = self._warm_up()
        log.info(
            "model_loaded",
            model=self._name,
            n_ctx=self.info.n_ctx,
            threads=self.info.n_threads,
            chat=self.info.chat,
            repack=self._repack,
            load_ms=round(load_ms, 1),
            warm_up_ms=round(warm_ms, 1),
        )

    def _warm_up(self) -> float:
        """Evaluate the chat prefix every request shares (system prompt, first role header).

        This pages the weights in and leaves that prefix in the KV cache, so the first real
        request starts as fast as later ones: voice assistants wait on the first sentence.
        """
        t0 = time.monotonic()
        tokens = self._encode(prompt="Hi", messages=None, system=None)
        self._llm.eval(tokens[: self._llm.n_ctx() - 1])
        return (time.monotonic() - t0) * 1000

    # -- limits, applied only on the worker thread ------------------------------------------------

    def _apply_threads(self) -> None:
        want = self._want_threads
        if want is None:
            return
        self._want_threads = None
        if want == self.threads:
            return
        t0 = time.perf_counter()
        llama_compat.set_threads(self._llm, want)
        log.info(
            "threads_changed",
            old=self.threads,
            new=want,
            cost_us=round((time.perf_counter() - t0) * 1e6, 1),
        )
        self.threads = want

    def _apply_ctx(self) -> None:
        want = self._want_ctx
        if want is None:
            return
        self._want_ctx = None
        if want == self.n_ctx:
            return
        t0 = time.perf_counter()
        llama_compat.rebuild_context(self._llm, want)
        cost_ms = (time.perf_counter() - t0) * 1000
        old, self.n_ctx = self.n_ctx, want
        log.info(
            "context_rebuilt",
            old=old,
            new=want,
            cost_ms=round(cost_ms, 1),
            warm_up_ms=round(self._warm_up(), 1),
        )

    def _sweep(self, tokens: int = 24, budget_s: float = 1.0) -> SweepResult:
        """Measure decode tokens/s at each thread count; the best becomes the ceiling.

        On big.LITTLE boards and busy small boards fewer threads are often faster, so the
        fastest count is measured, not assumed. Within 3 % of the best, fewer threads win.
        Each count gets `tokens` tokens or `budget_s` seconds, whichever ends first, so a
        count that is pathologically slow (a core taken by another process) cannot stall
        the start.
        """
        import psutil

        llm = self._llm
        prompt = self._encode(
            prompt="Count slowly from one to one hundred.", messages=None, system=None
        )
        results: dict[int, float] = {}
        for n in range(1, max(self.threads, psutil.cpu_count() or 1) + 1):
            llama_compat.set_threads(llm, n)
            llm.reset()
            llm.set_seed(1)
            stamps: list[float] = []
            gen = llm.generate(prompt, temp=0.0)
            try:
                for _ in gen:
                    self.heartbeat = self._clock()
                    stamps.append(time.perf_counter())
                    if len(stamps) > tokens or (
                        len(stamps) >= 4 and stamps[-1] - stamps[0] > budget_s
                    ):
                        break
            finally:
                gen.close()
            results[n] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        top = max(results.values())
        best = min(n for n, tps in results.items() if tps >= 0.97 * top)
        llama_compat.set_threads(llm, best)
        llm.reset()
        self._warm_up()
        self.threads = best
        self.sweep = SweepResult({n: round(t, 1) for n, t in results.items()}, best)
        log.info("thread_sweep", tokens_per_s=self.sweep.tokens_per_s, best=best)
        return self.sweep

    def _close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None
            log.info("model_closed", model=self._name)

    def _encode(
        self, prompt: str | None, messages: tuple[ChatMessage, ...] | None, system: str | None
    ) -> list[int]:
        """The prompt tokens: through the chat template on a chat model, raw text otherwise.

        The policy's fixed system prompt always comes first; a request's own system text (its
        `system` field or a leading system message) can only follow it.
        """
        llm = self._llm
        fixed = self._policy.system_prompt
        own = system if system is not None else self._gen.system
        if messages and messages[0].role == "system":
            own, messages = messages[0].content, messages[1:]
        system = compose_system(fixed, own)
        if self._chat_format is None:
            if messages is not None:
                raise _Rejected(
                    ErrorCode.BAD_REQUEST,
                    f"model {self._name} has no chat template: send 'prompt' for plain completion",
                )
            assert prompt is not None
            text = f"{system}\n\n{prompt}" if system else prompt
            return llm.tokenize(text.encode("utf-8"), add_bos=self._add_bos, special=False)
        chat: list[dict[str, str]] = []
        if system:
            chat.append({"role": "system", "content": system})
        if messages is not None:
            chat.extend({"role": m.role, "content": m.content} for m in messages)
        else:
            assert prompt is not None
            chat.append({"role": "user", "content": prompt})
        try:
            text = self._chat_format(messages=chat).prompt
        except Exception as err:  # the template's own raise_exception, e.g. role order
            raise _Rejected(
                ErrorCode.BAD_REQUEST, f"chat template refused the messages: {err}"
            ) from None
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        # special=True: the template's control tokens (<|im_start|>) must become single tokens.
        return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _check_prompt(self, job: Job) -> _Rejected | None:
        """The policy's verdict on what the request brings (blocked terms, the classifier)."""
        req = job.request
        texts = [req.prompt or "", req.system or ""]
        texts += [m.content for m in req.messages or ()]
        terms = TermFilter(self._policy.blocked_terms)
        if any(terms.find_in(t) for t in texts):
            return _Rejected(ErrorCode.POLICY, "the request contains a term this node refuses")
        if self._classifier is not None:
            reason = self._classifier.check("\n".join(t for t in texts if t))
            if reason is not None:
                return _Rejected(ErrorCode.POLICY, f"refused by the safety classifier: {reason}")
        return None

    def _max_new(self, req: Any) -> int:
        wanted = req.max_tokens or self._gen.max_tokens
        return int(min(wanted, self._limits.max_tokens))

    def _run(self, job: Job) -> None:
        import llama_cpp

        req = job.request
        started = self._clock()
        job.started_at = started
        if job.cancelled.is_set() or job.finished:
            job.finish_error(ErrorCode.CANCELLED, "cancelled before it started", _NOTHING_YET)
            return
        if started > req.deadline:
            job.finish_error(
                ErrorCode.TIMEOUT, "deadline passed while waiting in the queue", _NOTHING_YET
            )
            return
        llm = self._llm
        rejected = self._check_prompt(job)
        if rejected is not None:
            job.finish_error(rejected.code, rejected.message, _NOTHING_YET)
            return
        try:
            tokens = self._encode(req.prompt, req.messages, req.system)
        except _Rejected as rej:
            job.finish_error(rej.code, rej.message)
            return

        n_prompt = len(tokens)
        n_ctx = llm.n_ctx()
        notes: dict[str, Any] = {}
        wanted = req.max_tokens or self._gen.max_tokens
        max_new = self._max_new(req)
        room = n_ctx - n_prompt
        if room < 1:
            job.finish_error(
                ErrorCode.TOO_LONG,
                f"prompt is {n_prompt} tokens; the context holds {n_ctx}",
                {"usage": {"prompt_tokens": n_prompt, "completion_tokens": 0}},
            )
            return
        max_new = min(max_new, room)
        if max_new < wanted:
            reason = "context" if max_new == room else "limit"
            notes["max_tokens"] = {"requested": wanted, "used": max_new, "reason": reason}

        if req.seed is not None:
            # Reusing a cached prefix changes the logits' rounding (batch vs. single-token
            # kernels), so a seeded request evaluates its prompt afresh: same seed, same text.
            llm.reset()
            llm.set_seed(req.seed)
        else:
            llm.set_seed(_RANDOM_SEED)
        temp = req.temperature if req.temperature is not None else self._gen.temperature
        top_p = req.top_p if req.top_p is not None else self._gen.top_p

        stops = StopMatcher(req.stop)
        terms = TermFilter(self._policy.blocked_terms)
        chunker = SentenceChunker() if req.stream is StreamMode.SENTENCES else None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        parts: list[str] = []
        seq = 0
        n_out = 0
        first_at: float | None = None
        finish = "length"
        vocab = llama_compat.vocab(llm)

        def emit(text: str) -> None:
            nonlocal seq
            if not text:
                return
            parts.append(text)
            if req.stream is StreamMode.TOKENS:
                job.sink.delta(req, seq, text)
                seq += 1
            elif chunker is not None:
                for sentence in chunker.feed(text):
                    job.sink.delta(req, seq, sentence)
                    seq += 1

        # What the prompt costs: the tokens not already in the KV cache (for admission estimates).
        fresh = n_prompt - _common_prefix(llm.input_ids[: llm.n_tokens], tokens)
        gen_at = self._clock()
        gen = llm.generate(
            tokens,
            top_k=self._gen.top_k,
            top_p=top_p,
            temp=temp,
            repeat_penalty=self._gen.repeat_penalty,
        )
        outcome: tuple[ErrorCode, str] | None = None
        try:
            for token in gen:
                now = self._clock()
                self.heartbeat = now
                if first_at is None:
                    first_at = now
                if self._want_threads is not None:
                    self._apply_threads()  # a hot reading acts within one token
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                n_out += 1
                emit(terms.feed(stops.feed(decoder.decode(llm.detokenize([token])))))
                if terms.blocked:
                    outcome = (ErrorCode.POLICY, "the reply was stopped by this node's policy")
                    break
                if stops.stopped:
                    finish = "stop"
                    break
                if n_out >= max_new:
                    break
                if job.cancelled.is_set():
                    outcome = (ErrorCode.CANCELLED, "cancelled")
                    break
                if now > req.deadline:
                    outcome = (ErrorCode.TIMEOUT, "deadline passed during generation")
                    break
        finally:
            gen.close()

        end = self._clock()
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out}
        if outcome is not None:
            job.finish_error(outcome[0], outcome[1], {"usage": usage, "text": "".join(parts)})
            return
        emit(terms.feed(stops.feed(decoder.decode(b"", final=True))))
        emit(terms.feed(stops.flush()))
        if not terms.blocked:
            emit(terms.flush())
        verdict = self._output_verdict(terms, "".join(parts))
        if verdict is not None:
            job.finish_error(ErrorCode.POLICY, verdict, {"usage": usage, "text": ""})
            return
        if chunker is not None:
            for sentence in chunker.flush():
                job.sink.delta(req, seq, sentence)
                seq += 1
        first = first_at if first_at is not None else end
        decode_s = end - first
        timings = Timings(
            queue_ms=(started - req.received_at) * 1000,
            ttft_ms=(first - req.received_at) * 1000,
            total_ms=(end - req.received_at) * 1000,
            tokens_per_s=(n_out - 1) / decode_s if n_out > 1 and decode_s > 0 else 0.0,
        )
        if req.stream is not StreamMode.OFF:
            notes["seq"] = seq
        if timings.tokens_per_s > 0:
            self.tokens_per_s_avg = _ema(self.tokens_per_s_avg, timings.tokens_per_s)
        if first_at is not None and fresh >= 16 and first_at > gen_at:
            self.prefill_per_s_avg = _ema(self.prefill_per_s_avg, fresh / (first_at - gen_at))
        job.finish_done(
            Done(
                text="".join(parts),
                finish_reason=finish,
                usage=Usage(n_prompt, n_out),
                timings=timings,
                notes=notes,
            )
        )

    def _output_verdict(self, terms: TermFilter, text: str) -> str | None:
        """Why the finished reply must not be sent (policy), or None."""
        if terms.blocked:
            return "the reply was stopped by this node's policy"
        if self._classifier is not None and text:
            reason = self._classifier.check(text)
            if reason is not None:
                return f"the reply was refused by the safety classifier: {reason}"
        return None


def _ema(avg: float | None, value: float) -> float:
    return value if avg is None else 0.7 * avg + 0.3 * value
