"""Which model is loaded: the one owner of loading, swapping and unloading (docs/MODELS.md).

One model is in memory at a time: a Pi has no room for two. A swap
1. checks, before anything is unloaded, that the new model fits in what is available now plus
   what the current one frees (estimate.swap_shortfall);
2. closes the gate: requests meanwhile are answered `busy` with a Retry-After (HTTP 503);
3. lets the running and waiting jobs finish (limits.shutdown_grace_s; any left get a clear
   error), and stops the engine, which frees the model;
4. starts an engine on the new model, after the CPU check for it, and if that fails starts the
   old one again. Only if the old one cannot come back either does the node fail (the service
   exits and systemd starts it on its configured model).
`unload` (ollama's keep_alive 0) is steps 2-3; the next request loads the model back.

A swap runs on a thread of its own; an HTTP request that names the model waits for it, the
MQTT command does not. The service hears of each change through on_change and moves what
follows the model: intake's engine, the governor, the status and discovery.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from daemon import devbench, models
from daemon.catalog import CATALOG
from daemon.config import Config
from daemon.engine import Engine, EngineError, ModelInfo, cpuprobe
from daemon.estimate import measured_speeds, swap_shortfall
from daemon.governor import boards, memory
from daemon.governor.policy import kv_bytes_per_token

log = structlog.get_logger(__name__)

# Seconds to suggest in Retry-After while a model loads, before any load has been timed.
LOAD_GUESS_S = 5.0
_DRAIN_POLL_S = 0.05

# Builds (does not start) an engine for a model file: name, path, and the CPU's verdict.
EngineBuilder = Callable[[Path, str, cpuprobe.Verdict], Engine]


def give_back_memory() -> None:
    """After a model is freed: collect the reference cycles that still hold native memory of
    it, and hand glibc's free heap back to the kernel, so the next model has the room. Without
    this the daemon's RSS grew ~26 MiB per round trip of swaps (bench/swap.py); with it, flat."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def benched(name: str) -> dict[str, float | None] | None:
    """What `edgellm bench` measured of this model on this device, or None (daemon/devbench.py)."""
    result = devbench.load_results().get(name)
    try:
        speeds = measured_speeds(result) if isinstance(result, dict) else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # a result of another shape: say nothing rather than something wrong
    if speeds is None:
        return None
    return {
        "prompt_tps": round(speeds.prompt_tps, 1),
        "decode_tps": round(speeds.decode_tps, 1),
        "ttft_cold_s": speeds.cold_s,
        "ttft_warm_s": speeds.warm_s,
    }


class SwapError(Exception):
    """A swap refused or failed; status is the HTTP status that says why."""

    def __init__(self, message: str, status: int, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass
class _Attempt:
    """One swap (or unload, name None) in progress, waited on by whoever asked."""

    name: str | None
    path: Path | None
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class ModelSlot:
    """Holds the loaded engine and its model; swaps and unloads on request."""

    def __init__(
        self,
        cfg: Config,
        build: EngineBuilder,
        on_change: Callable[[], None],
        say: Callable[[str], None] = lambda _text: None,
        clock: Callable[[], float] = time.monotonic,
        locate: Callable[[str, Path | None], Path] = models.locate,
    ):
        self.cfg = cfg
        self._locate = locate  # a named seam: tests hand in model files of their own
        self._build = build
        self._on_change = on_change
        self._say = say  # systemd's STATUS= line
        self._clock = clock
        self._lock = threading.Lock()
        self.engine: Engine | None = None
        self.info: ModelInfo | None = None
        self.verdict: cpuprobe.Verdict | None = None
        self._attempt: _Attempt | None = None
        self._last_name: str | None = None  # what an unloaded node loads again
        self._load_s = LOAD_GUESS_S
        self.last_swap: dict[str, Any] | None = None  # for the status message
        self.failure: str | None = None  # set when no model could be loaded back

    # -- start-up -------------------------------------------------------------------------------

    def start(self, name: str, path: Path) -> ModelInfo:
        """Load the configured model; raises CpuUnsupported or EngineError (exit codes)."""
        engine, info = self._load(name, path)
        self.engine, self.info, self._last_name = engine, info, name
        return info

    # -- what other threads ask -----------------------------------------------------------------

    @property
    def state(self) -> str:
        """loaded, loading (a swap or an unload in progress) or unloaded."""
        if self._attempt is not None:
            return "loading"
        return "loaded" if self.engine is not None else "unloaded"

    def gate(self) -> tuple[str, float] | None:
        """Intake's check: why a request cannot be queued now and when to retry, or None. An
        unloaded node starts loading its model again on the first request."""
        with self._lock:
            attempt = self._attempt
            if attempt is None and self.engine is None and self.failure is None:
                name = self._last_name or self.cfg.model.name
                try:
                    attempt = self._begin(name, self._path_of(name))
                except SwapError as err:
                    return f"no model is loaded: {err.message}", self._load_s
        if attempt is None:
            return None
        what = f"model {attempt.name} is loading" if attempt.name else "the model is unloading"
        return f"{what}; try again shortly", self._load_s

    def want(self, name: str, wait_s: float) -> None:
        """Make `name` (catalog name or file) the loaded model, waiting up to wait_s; raises
        SwapError when it is not installed, does not fit, another swap runs, or it fails."""
        with self._lock:
            attempt = self._attempt
            if attempt is None and self.info is not None and self.info.name == name:
                return
            if attempt is not None and attempt.name != name:
                busy = f"model {attempt.name} is loading" if attempt.name else "unloading"
                raise SwapError(f"{busy}; try again shortly", 503, self._load_s)
            if attempt is None:
                attempt = self._begin(name, self._path_of(name))
        if not attempt.done.wait(wait_s):
            raise SwapError(f"model {name} is still loading", 503, self._load_s)
        if attempt.error is not None:
            raise SwapError(attempt.error, 500)

    def unload(self) -> None:
        """Free the model (ollama's keep_alive 0); the next request loads it again."""
        with self._lock:
            if self.engine is None and self._attempt is None:
                return
            if self._attempt is not None:
                raise SwapError("a model is loading; try again shortly", 503, self._load_s)
            attempt = self._begin(None, None)
        attempt.done.wait()

    def details(self) -> dict[str, Any]:
        """The status message's part about the model: which, its limits, measured speeds."""
        engine, info, verdict = self.engine, self.info, self.verdict
        details: dict[str, Any] = {"model_state": self.state, "model_swap": self.last_swap}
        if info is not None and engine is not None:
            details.update(
                model=info.name, chat=info.chat, n_ctx=engine.n_ctx, threads=engine.threads
            )
            if (sweep := engine.sweep) is not None:
                # The measured speed per thread count, recorded where anyone can read it.
                details["thread_sweep"] = {str(n): tps for n, tps in sweep.tokens_per_s.items()}
                if (batch := sweep.batch_tokens_per_s) is not None:
                    details["prefill_sweep"] = {str(n): tps for n, tps in batch.items()}
                details["threads_batch"] = engine.threads_batch
        if verdict is not None:
            details["cpu_repack"] = verdict.repack
        if info is not None and (bench := benched(info.name)) is not None:
            details["bench"] = bench
        return details

    def installed(self, name: str) -> bool:
        """Whether `name` is a model this node could load without a download."""
        try:
            self._path_of(name)
        except SwapError:
            return False
        return True

    # -- the swap --------------------------------------------------------------------------------

    def _path_of(self, name: str) -> Path:
        if name not in CATALOG and name != self.cfg.model.name:
            # Never a path or URL a client names: the catalog's models, or the configured one.
            raise SwapError(f"model '{name}' is not in edgellm's catalog", 404)
        try:
            return self._locate(name, self.cfg.model.dir)
        except models.ModelError as err:
            raise SwapError(f"model '{name}' is not installed: {err}", 404) from None

    def _begin(self, name: str | None, path: Path | None) -> _Attempt:
        """Check memory, then start the swap's thread (the caller holds the lock)."""
        if path is not None:
            self._check_memory(name or "", path)
        attempt = self._attempt = _Attempt(name, path)
        threading.Thread(target=self._swap, args=(attempt,), name="swap", daemon=True).start()
        return attempt

    def _check_memory(self, name: str, path: Path) -> None:
        entry = CATALOG.get(name)
        kv = entry.facts.kv_bytes_per_token if entry is not None and entry.facts else None
        freed = 0
        if self.info is not None and self.engine is not None:
            freed = self.info.size_bytes
            with contextlib.suppress(ValueError):
                freed += kv_bytes_per_token(self.info.metadata) * self.engine.n_ctx
        root = self.cfg.monitor.sysfs_root
        headroom = memory.headroom(root)
        margin = boards.detect(root).mem_margin_bytes
        why = swap_shortfall(path.stat().st_size, kv, headroom, freed, margin)
        if why is not None:
            raise SwapError(f"model '{name}' does not fit: {why}", 503)

    def _swap(self, attempt: _Attempt) -> None:
        t0 = self._clock()
        old, old_info = self.engine, self.info
        to = attempt.name or "nothing"
        log.info("model_swap_begin", old=old_info and old_info.name, new=to)
        if old is not None:
            self._say(f"swapping the model for {to}")
            self._drain(old, f"the model is being swapped for {to}")
        self.engine = old = None
        give_back_memory()
        engine, info = None, None
        if attempt.name is not None and attempt.path is not None:
            engine, info = self._try_load(attempt, old_info)
        seconds = round(self._clock() - t0, 2)
        with self._lock:
            self.engine, self.info = engine, info
            self._last_name = info.name if info is not None else self._last_name
            if attempt.name is not None and attempt.error is None:
                self._load_s = max(1.0, seconds)
            self.last_swap = {"to": to, "seconds": seconds, "error": attempt.error}
            self._attempt = None
        log.info("model_swap_done", new=info and info.name, seconds=seconds, error=attempt.error)
        attempt.done.set()
        self._on_change()

    def _drain(self, engine: Engine, reason: str) -> None:
        """Let the running and waiting jobs finish (the gate is closed), then stop the engine."""
        deadline = self._clock() + self.cfg.limits.shutdown_grace_s
        while (engine.busy or engine.queue_depth) and self._clock() < deadline:
            time.sleep(_DRAIN_POLL_S)
        engine.stop(self.cfg.limits.shutdown_grace_s, reason)

    def _try_load(
        self, attempt: _Attempt, old: ModelInfo | None
    ) -> tuple[Engine | None, ModelInfo | None]:
        """The new model, or on failure the old one again (None, None: neither)."""
        assert attempt.name is not None and attempt.path is not None
        try:
            return self._load(attempt.name, attempt.path)
        except (EngineError, cpuprobe.CpuUnsupported) as err:
            attempt.error = f"cannot load model '{attempt.name}': {err}"
            log.error("model_swap_failed", model=attempt.name, error=str(err))
        if old is None:
            return None, None
        try:
            return self._load(old.name, Path(old.path))
        except (EngineError, cpuprobe.CpuUnsupported) as err:
            self.failure = f"{attempt.error}; the previous model did not load again: {err}"
            log.error("model_restore_failed", model=old.name, error=str(err))
            return None, None

    def _load(self, name: str, path: Path) -> tuple[Engine, ModelInfo]:
        """The CPU check for this file (cached), then an engine on it, started."""
        self._say("checking that llama.cpp runs on this CPU")
        verdict = cpuprobe.decide(self.cfg.model.cpu_repack, path)
        log.info(
            "cpu_verdict",
            repack=verdict.repack,
            source=verdict.source,
            probed=verdict.modes,
            probe_s=round(verdict.probe_s, 2),
        )
        self.verdict = verdict
        self._say(f"loading model {name}")
        engine = self._build(path, name, verdict)
        gov = self.cfg.governor
        info = engine.start(sweep_threads=gov.enabled and gov.thread_sweep)
        return engine, info
