"""The only owner of llama_cpp.Llama: one worker thread loads the model and runs every request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from daemon.config import GenerationConfig, LimitsConfig, ModelConfig, PolicyConfig
from daemon.engine import admission, llama_compat, loading
from daemon.engine.generation import NOTHING_YET, Generation
from daemon.engine.history import PRIME_AFTER_S, SessionMemory
from daemon.engine.kvstates import KvStates
from daemon.engine.limits import LiveLimits
from daemon.engine.loading import ModelInfo
from daemon.engine.prompt import Prompter
from daemon.engine.sweep import SweepResult
from daemon.engine.tuning import SWEEP_PROMPT, ThreadTuner
from daemon.requests import ErrorCode, Job, JobQueue, QueueFull, is_request, job_key
from daemon.safeguards.policy import Classifier

log = structlog.get_logger(__name__)

_POLL_S = 0.5
# Faults in a row after which the worker gives up: the daemon goes offline and systemd restarts
# it with a fresh process (a fault loop would otherwise answer `internal` forever).
_MAX_FAULTS = 3


class EngineError(Exception):
    """The engine cannot start or take work."""


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
        memory: SessionMemory | None = None,
    ):
        self._path = model_path
        # Weight repacking: off unless the CPU probe said it runs here (cpuprobe.py).
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
        self._prompter: Prompter | None = None
        self.info: ModelInfo | None = None
        # Last time the worker proved it is alive (between jobs and between tokens).
        self.heartbeat = clock()
        # Limits asked for by other threads; the worker applies them at a safe point.
        self._limits_now = LiveLimits()
        self._rates = admission.Rates(prefill=None, decode=None)
        # Set (with a reason) when the worker cannot go on: the service goes offline and exits.
        self.failure: str | None = None
        self.failed = threading.Event()
        self._tuner = ThreadTuner(clock, fixed_batch=model_cfg.n_threads_batch)
        self._limits_now.batch_of = self._tuner.batch_threads
        self.memory = memory or SessionMemory(None, KvStates(0))  # sessions: turns, KV states

    # -- called from other threads -------------------------------------------------------------

    def start(self, timeout: float = 120.0, sweep_threads: bool = False) -> ModelInfo:
        """Start the worker, load the model on it, and wait until it is ready.

        With sweep_threads, the worker then measures decode speed at each thread count in short
        slices while no job waits (daemon/engine/tuning.py); `sweep` holds the result once done.
        """
        if sweep_threads:
            self._tuner.want()
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EngineError(f"model did not load within {timeout:.0f} s")
        if self._load_error is not None:
            raise EngineError(f"cannot load model {self._path}: {self._load_error}")
        assert self.info is not None
        return self.info

    def submit(self, job: Job) -> None:
        """Queue a job; raises QueueFull (answer busy), DuplicateId or WouldMissDeadline. A full
        queue makes room for an interactive job by answering the newest background one `busy`."""
        req = job.request
        job.estimate_s = admission.estimate(req, self._gen, self._limits, self.rates(), self.n_ctx)
        with self._lock:
            current = self._current
            running = current is not None and job_key(current.request) == job_key(req)
            if running or self._queue.find(job_key(req)):
                raise admission.DuplicateId(req.id)
            if self._stop.is_set() or self.failed.is_set():
                raise QueueFull
            wait = admission.wait_seconds(
                job, current, self._queue.snapshot(), self._clock(), self.rates(), self.n_ctx
            )
            if wait is not None and self._clock() + wait > req.deadline:
                raise admission.WouldMissDeadline(wait)
            displaced = self._queue.put(job)
        if displaced is not None:
            displaced.finish_error(
                ErrorCode.BUSY,
                "the queue is full and an interactive request took this one's place",
                {"queue_depth": len(self._queue)},
            )

    def rates(self) -> admission.Rates:
        return self._rates  # measured prefill and decode tokens/s (None until measured)

    def expire_waiting(self) -> int:
        """Answer `timeout` to every waiting job whose deadline has passed; how many."""
        now = self._clock()
        expired = self._queue.remove_if(lambda j: now > j.request.deadline)
        for job in expired:
            job.finish_error(
                ErrorCode.TIMEOUT, "deadline passed while waiting in the queue", NOTHING_YET
            )
        return len(expired)

    def cancel(self, request_id: str, client: str | None = None) -> bool:
        """Stop a running generation between tokens, or answer a waiting one at once (its place
        in the queue is free at once). With client, only a request of that client."""
        with self._lock:
            job = self._current
            running = job is not None and is_request(job, request_id, client)
            if not running:
                job = self._queue.take_out(request_id, client)
        if job is None:
            return False
        job.cancelled.set()
        if not running:
            job.finish_error(ErrorCode.CANCELLED, "cancelled before it started", NOTHING_YET)
        return True

    def request_sweep(self) -> None:
        """Measure the thread counts again between jobs (SIGUSR1: after a change of cooling)."""
        self._tuner.want()

    @property
    def sweep(self) -> SweepResult | None:
        """The last finished thread sweep (None before the first)."""
        return self._tuner.result

    def set_limits(self, threads: int | None = None, n_ctx: int | None = None) -> None:
        """Ask for a new thread count (applied between tokens) or context length (between jobs)."""
        if threads is not None:
            self._limits_now.want_threads = threads
        if n_ctx is not None:
            self._limits_now.want_ctx = n_ctx

    def update_settings(
        self, generation: GenerationConfig, limits: LimitsConfig, policy: PolicyConfig | None = None
    ) -> None:
        """New request defaults, bounds and policy (a reload); the next job uses them."""
        self._gen = generation
        self._limits = limits
        if policy is not None:
            self._policy = policy
        if self._prompter is not None:
            self._prompter.gen, self._prompter.policy = generation, self._policy
        self._queue.maxsize = limits.queue_size

    def native_limits(self) -> tuple[int, int]:
        """(threads, n_ctx) as llama.cpp itself reports them: proof that a change took effect."""
        return llama_compat.native_limits(self._llm)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def backlog_s(self) -> float | None:
        """Seconds until a new job could start: 0 when idle, None when busy with no estimate."""
        with self._lock:
            return admission.backlog_seconds(self._current, self._queue.snapshot(), self._clock())

    @property
    def busy(self) -> bool:
        return self._current is not None

    def stop(self, grace_s: float, reason: str = "the daemon is shutting down") -> None:
        """Refuse new work, let the running job finish within grace_s, then free the model."""
        self._stop.set()
        for job in self._queue.drain():
            job.finish_error(ErrorCode.CANCELLED, reason, NOTHING_YET)
        deadline = time.monotonic() + grace_s
        while self._current is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        if (current := self._current) is not None:
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
        self._tuner.busy()  # the first slice waits for a pause too: requests sent at `online` first
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
                log.exception("engine_fault", id=job and job.request.id, consecutive=faults)
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
        """One turn of the worker: beat, maybe a sweep slice, take a job, apply limits, run it."""
        self._checkpoint("beat")
        self.heartbeat = self._clock()
        sweeping = self._tuner.pending() and not len(self._queue)
        if sweeping:
            # One slice of a few tokens, only while no job waits; a job that arrives ends it
            # at the next token (daemon/engine/sweep.py). READY came first, so start-up is fast.
            self._checkpoint("sweep")
            self._sweep_slice()
        # A session's follow-up is primed after a short idle pause (engine/history.py, prime).
        wait = 0.0 if sweeping else PRIME_AFTER_S if self.memory.priming else _POLL_S
        if (job := self._queue.get(timeout=wait)) is None and self.memory.priming:
            self.memory.prime(self._llm, self._prompter)
        with self._lock:
            self._current = job
        self._checkpoint("limits")
        self._limits_now.apply_threads(self._llm)
        self._limits_now.apply_ctx(self._llm, self._warm_up)
        if job is None:
            return
        self._tuner.busy()
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
            job.finish_error(ErrorCode.INTERNAL, "the inference engine stopped", NOTHING_YET)

    def _load(self) -> None:
        t0 = time.monotonic()
        llm, self.info, template = loading.load(self._path, self._name, self._mcfg, self._repack)
        gen, policy = self._gen, self._policy
        self._prompter = Prompter(llm, self._name, gen, policy, template, self._classifier)
        self._llm = llm
        self._limits_now.threads = self.info.n_threads
        self._limits_now.n_ctx = llm.n_ctx()
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
        request starts as fast as later ones: voice assistants wait on the first sentence. The
        prompt is the thread sweep's, so its slices start with no prompt to evaluate either.
        """
        t0 = time.monotonic()
        assert self._prompter is not None
        self.memory.kv.clear()  # a new or reset context: no KV state saved before fits it
        tokens = self._prompter.encode(prompt=SWEEP_PROMPT, messages=None, system=None)
        self._llm.eval(tokens[: self._llm.n_ctx() - 1])
        return (time.monotonic() - t0) * 1000

    @property
    def threads(self) -> int:
        """The thread count in effect."""
        return self._limits_now.threads

    @property
    def threads_batch(self) -> int:
        return self._limits_now.batch_of(self._limits_now.threads)  # prompt processing's

    @property
    def n_ctx(self) -> int:
        """The context length in effect."""
        return self._limits_now.n_ctx

    def _sweep_slice(self) -> None:
        """Run one slice of the thread sweep; jobs then run at the count in effect or the best."""
        assert self._prompter is not None
        prompt = self._prompter.encode(SWEEP_PROMPT, None, None)
        self.memory.kv.prepare(self._llm, None, prompt)  # a stateless prefix (HA's) is saved
        beat = lambda: setattr(self, "heartbeat", self._clock())  # noqa: E731
        abandon = lambda: bool(len(self._queue)) or self._stop.is_set()  # noqa: E731
        threads = self._tuner.step(self._llm, lambda: prompt, self.threads, beat, abandon)
        self._limits_now.set_now(self._llm, threads)

    def _close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None
            log.info("model_closed", model=self._name)

    def _run(self, job: Job) -> None:
        """Run one job to its terminal reply (daemon/engine/generation.py); keep its speeds."""
        assert self._prompter is not None
        measured = Generation(
            job,
            self._llm,
            self._prompter,
            self._gen,
            admission.max_new(job.request, self._gen, self._limits),
            self._clock,
            self._on_token,
            self.memory,
        ).run()
        if measured is not None:
            self._rates = admission.updated(
                self._rates, measured.tokens_per_s, measured.prefill_per_s
            )
            self._tuner.after(self.threads, self.threads_batch, measured)

    def _on_token(self, now: float) -> None:
        self.heartbeat = now
        if self._limits_now.want_threads is not None:
            self._limits_now.apply_threads(self._llm)  # a hot reading acts within one token
