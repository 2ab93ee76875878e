"""The governor's loop: read the sensors, let the policy decide, apply it, publish telemetry."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from daemon.config import Config, GovernorConfig
from daemon.engine import Engine, ModelInfo
from daemon.governor import boards
from daemon.governor.policy import (
    MIB,
    Decision,
    Limits,
    ModelFacts,
    ctx_max_of,
    decide,
    kv_bytes_per_token,
    kv_state_budget,
)
from daemon.governor.snapshot import LoadAware, SensorSource, Snapshot

log = structlog.get_logger(__name__)

_HISTORY = 120  # readings kept for the policy (two minutes at the default interval)


def model_facts(info: ModelInfo, engine: Engine, gcfg: GovernorConfig) -> ModelFacts:
    """What the policy needs to know of the model, from its GGUF metadata and the sweep."""
    try:
        kv = kv_bytes_per_token(info.metadata)
    except ValueError as err:
        log.warning("kv_size_unknown", error=str(err))
        kv = 0
    ceiling = engine.sweep.best if engine.sweep is not None else engine.threads
    return ModelFacts(
        kv_bytes_per_token=kv,
        n_ctx_train=info.n_ctx_train,
        thread_ceiling=max(ceiling, gcfg.min_threads),
        min_threads=gcfg.min_threads,
    )


def telemetry(
    snap: Snapshot | None,
    limits: Limits,
    engine: Engine,
    last_change: tuple[float, Decision] | None,
    board: str,
    now: float,
) -> dict[str, Any]:
    """The telemetry message: sensors, limits, speed, queue, and the last decision."""
    body: dict[str, Any] = {
        "board": board,
        "threads": engine.threads,
        "n_ctx": engine.n_ctx,
        "admit": limits.admit,
        "tokens_per_s": round(decode, 1) if (decode := engine.rates().decode) else None,
        "queue_depth": engine.queue_depth,
        "busy": engine.busy,
        # Sessions: how many are kept, and the memory their saved KV states hold (bytes).
        "sessions": len(engine.memory.store) if engine.memory.store is not None else 0,
        "kv_states": engine.memory.kv.nbytes,
        "kv_budget": engine.memory.kv.budget_bytes,
    }
    if snap is not None:
        body.update(
            cpu_temp_c=snap.cpu_temp_c,
            zones=dict(snap.zones),
            throttle=str(snap.throttle) if snap.throttle is not None else None,
            mem_available=snap.mem_available,
            mem_total=snap.mem_total,
            swap_used=snap.swap_used,
            cgroup_limit=snap.cgroup_limit,
            cgroup_current=snap.cgroup_current,
            mem_headroom=snap.mem_headroom,
        )
        if snap.jetson_power_mode is not None:
            body["jetson_power_mode"] = snap.jetson_power_mode
        if snap.gpu_mem_used is not None:
            body["gpu_mem_used"] = snap.gpu_mem_used
    if last_change is not None:
        at, decision = last_change
        body["decision"] = {"reason": decision.reason, "age_s": round(now - at, 1)}
    return body


class Steering:
    """Owns the sensors and the current Limits; the engine applies what it decides."""

    def __init__(
        self,
        cfg: Config,
        engine: Engine,
        info: ModelInfo,
        sensors: SensorSource,
        publish: Callable[[dict[str, Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        profile = boards.detect(cfg.monitor.sysfs_root)
        self.board = profile.name
        self.gcfg = boards.resolve(cfg.governor, profile, n_ctx=ctx_max_of(cfg))
        self._engine = engine
        self._sensors = sensors
        self._publish = publish
        self._clock = clock
        self._interval = cfg.monitor.interval_s
        self._kv_ceiling = cfg.sessions.kv_budget_mb * MIB
        self.facts = model_facts(info, engine, self.gcfg)
        self.limits = Limits(threads=engine.threads, n_ctx=engine.n_ctx, admit=True)
        self._requested = self.limits
        self._sweep_seen = engine.sweep
        self._requested = self.limits
        self.history: collections.deque[Snapshot] = collections.deque(maxlen=_HISTORY)
        self.last_change: tuple[float, Decision] | None = None
        self._last_telemetry = -float("inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="governor", daemon=True)
        log.info(
            "governor_start",
            board=self.board,
            soft_temp_c=self.gcfg.soft_temp_c,
            hard_temp_c=self.gcfg.hard_temp_c,
            thread_ceiling=self.facts.thread_ceiling,
            kv_bytes_per_token=self.facts.kv_bytes_per_token,
        )

    @property
    def admit(self) -> bool:
        return self.limits.admit

    def reconfigure(self, cfg: Config) -> None:
        """New governor settings after a reload; the next tick uses them."""
        self.gcfg = boards.resolve(
            cfg.governor,
            boards.detect(cfg.monitor.sysfs_root),
            n_ctx=ctx_max_of(cfg),
        )
        # The floor is the facts' too (set at start): lowering it must lower both.
        self.facts = replace(self.facts, min_threads=self.gcfg.min_threads)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _main(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:
                # A sensor or policy bug must not stop the daemon; the next tick tries again.
                log.exception("governor_tick_failed")

    def tick(self) -> Decision:
        """One step: read, decide, apply, and publish telemetry when due or on change."""
        now = self._clock()
        sweep = self._engine.sweep
        if sweep is not None and sweep is not self._sweep_seen:
            self._sweep_seen = sweep
            # A sweep (at start, or asked for with SIGUSR1) has finished: its best count is
            # the ceiling from now on.
            self.facts = replace(self.facts, thread_ceiling=max(sweep.best, self.gcfg.min_threads))
            self.limits = replace(self.limits, threads=self._engine.threads)
            self._requested = replace(self._requested, threads=self._engine.threads)
        if isinstance(self._sensors, LoadAware):
            # A simulated source is heated by the daemon's own work; real sensors see it.
            self._sensors.set_load(self._engine.threads, self._engine.busy)
        snap = self._sensors.read()
        self.history.append(snap)
        decision = decide(list(self.history), self.limits, self.gcfg, self.facts, now)
        kv = self._engine.memory.kv
        kv.budget_bytes = kv_state_budget(snap.mem_headroom, kv.nbytes, self.gcfg, self._kv_ceiling)
        new, old = decision.limits, self._requested
        fresh = decision.changed and new != old
        if fresh:
            log.info(
                "governor_decision",
                reason=decision.reason,
                threads=new.threads,
                n_ctx=new.n_ctx,
                admit=new.admit,
                cpu_temp_c=snap.cpu_temp_c,
                mem_headroom=snap.mem_headroom,
            )
            self._engine.set_limits(
                threads=new.threads if new.threads != old.threads else None,
                n_ctx=new.n_ctx if new.n_ctx != old.n_ctx else None,
            )
            self._requested = new
            self.last_change = (now, decision)
        # The policy must see the context actually allocated: until the engine has rebuilt it
        # between jobs, the old KV cache is still in memory.
        self.limits = replace(new, n_ctx=self._engine.n_ctx)
        if fresh or now - self._last_telemetry >= self.gcfg.telemetry_interval_s:
            self._last_telemetry = now
            self._publish(
                telemetry(snap, self.limits, self._engine, self.last_change, self.board, now)
            )
        return decision
