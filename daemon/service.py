"""The composition root: builds the parts, owns the stop event and the ordered shutdown."""

from __future__ import annotations

import collections
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

from daemon import __version__, config, logsetup, models
from daemon.config import Config
from daemon.credentials import http_api_key, mqtt_password
from daemon.engine import Engine, EngineError, ModelInfo, cpuprobe, default_threads
from daemon.engine.history import make_memory
from daemon.frontends import ha_discovery
from daemon.frontends.http_api import HttpFrontDoor
from daemon.frontends.mqtt import Transport
from daemon.frontends.mqtt_admin import ModelCommand
from daemon.frontends.mqtt_door import MqttFrontDoor
from daemon.frontends.mqtt_messages import status_payload, telemetry_payload
from daemon.frontends.topics import Topics, ha_status
from daemon.frontends.wyoming_handle import WyomingDoor
from daemon.governor.loop import Steering
from daemon.governor.snapshot import SensorSource
from daemon.governor.sources import make_sensors
from daemon.intake import Intake
from daemon.reload import plan_reload
from daemon.safeguards.policy import load_classifier
from daemon.sdnotify import Notifier, worker_alive
from daemon.slot import ModelSlot

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_MODEL = 3
EXIT_MQTT = 4
# llama.cpp dies on this CPU whichever way the weights are loaded: a restart cannot fix it.
EXIT_CPU = 5
# The inference worker failed and could not recover: systemd restarts a fresh process.
EXIT_ENGINE = 6


class Service:
    """One edgellm node: a model, a broker connection, and the glue between them."""

    def __init__(
        self,
        cfg: Config,
        model_path: Path | None = None,
        config_path: Path | None = None,
        overrides: dict[str, Any] | None = None,
        notifier: Notifier | None = None,
        engine_factory: type[Engine] = Engine,
    ):
        self.cfg = cfg
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.node_id, cfg.fleet.group)
        self.stop_event = threading.Event()
        # Signals land here (see on_signal); the main loop takes them off.
        self._signals: collections.deque[str] = collections.deque()
        self.notifier = notifier or Notifier.from_env()
        self._config_path = config_path
        self._overrides = overrides or {}
        # A named seam: tests pass an Engine subclass that hangs, to prove the watchdog.
        self._engine_factory = engine_factory
        self.counters: Counter = Counter()
        self._model_path = model_path
        self.slot: ModelSlot | None = None  # the loaded model's owner (daemon/slot.py)
        self.transport: Transport | None = None
        self.steering: Steering | None = None
        self.intake: Intake | None = None
        self.door: MqttFrontDoor | None = None
        self.http: HttpFrontDoor | None = None
        self.wyoming: WyomingDoor | None = None
        self._sensors: SensorSource | None = None

    @property
    def engine(self) -> Engine | None:
        """The loaded model's engine: None before start and while no model is loaded."""
        return self.slot.engine if self.slot is not None else None

    def status_details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"node_id": self.cfg.node_id, "version": __version__}
        if self.slot is not None:
            details.update(self.slot.details())
        details["request_topic"] = self.topics.request
        if self.http is not None:
            details["http_port"] = self.http.port
        if self.wyoming is not None:
            details["wyoming"] = {"host": self.cfg.wyoming.host, "port": self.cfg.wyoming.port}
        if self.topics.group is not None and self.cfg.mqtt.protocol == "5":
            topics = self.topics
            details["fleet"] = {"group": topics.group, "request_topic": topics.fleet_request}
        return details

    def _status(self, state: str, reason: str | None = None) -> bytes:
        """The retained status payload: `online` with the details, `offline` with a reason."""
        if state == "online":
            return status_payload(state, self.status_details())
        details: dict[str, Any] = {"node_id": self.cfg.node_id}
        if reason is not None:
            details["reason"] = reason
        return status_payload(state, details)

    def _memory_ok(self) -> bool:
        """The governor's memory admission (always True without a governor)."""
        return self.steering is None or self.steering.admit

    def run(self) -> int:
        """Start, serve until stop_event is set, shut down in order; return the exit code."""
        t0 = time.monotonic()
        code = self._start()
        if code is not None:
            return code
        code, offline = self._serve(t0)
        self.notifier.stopping("shutting down")
        self.shutdown(offline)
        return code

    def _start(self) -> int | None:
        """Build and start the parts in order; an exit code when one cannot start."""
        try:
            path = self._model_path or models.locate(self.cfg.model.name, self.cfg.model.dir)
        except models.ModelError as err:
            log.error("model_unavailable", error=str(err))
            return EXIT_MODEL
        try:
            classifier = load_classifier(self.cfg.policy.classifier)
        except ValueError as err:
            log.error("classifier_unavailable", error=str(err))
            return EXIT_CONFIG
        memory = make_memory(self.cfg.sessions)  # one for every model: a swap keeps the turns

        def build(path: Path, name: str, verdict: cpuprobe.Verdict) -> Engine:
            cfg = self.cfg
            return self._engine_factory(
                path, name, cfg.model, cfg.generation, cfg.limits, repack=verdict.repack,
                policy=cfg.policy, classifier=classifier, memory=memory,
            )  # fmt: skip

        self.slot = ModelSlot(self.cfg, build, self._on_model, self.notifier.status)
        self.intake = Intake(self.cfg, None, self.counters, self._memory_ok)
        self.intake.gate = self.slot.gate
        transport = self._connect(self.intake)
        try:
            info = self.slot.start(self.cfg.model.name, path)
        except (cpuprobe.CpuUnsupported, EngineError) as err:
            cpu = isinstance(err, cpuprobe.CpuUnsupported)
            log.error("cpu_unsupported" if cpu else "model_load_failed", error=str(err))
            transport.stop()
            return EXIT_CPU if cpu else EXIT_MODEL
        self._on_model()
        self.intake.accepting = True
        self._start_http()
        self._start_wyoming(self.intake, info)
        self._refresh()
        self.notifier.status("connecting to the broker")
        return None

    def _start_http(self) -> None:
        """The HTTP API, once the model is ready; a port already taken leaves MQTT serving."""
        if not self.cfg.http.enabled:
            return
        assert self.intake is not None and self.slot is not None
        key = http_api_key(self.cfg.http)
        door = HttpFrontDoor(self.cfg, self.intake, self.counters, self.slot, key)
        if door.start():
            self.http = door

    def _connect(self, intake: Intake) -> Transport:
        """The MQTT front door, connecting in the background (while the model loads: both take
        a moment and neither needs the other)."""
        self.door = MqttFrontDoor(self.cfg, self.topics, intake, self.counters)
        self.transport = Transport(
            self.cfg.mqtt,
            self.topics,
            self.cfg.mqtt.client_id or f"edgellm-{self.cfg.node_id}",
            mqtt_password(self.cfg.mqtt),
            on_request=self.door.on_request,
            on_cancel=self.door.on_cancel,
            offline_payload=self._status("offline"),
            routes={**self._ha_routes(), **self.door.routes(), **self._admin_routes()},
            on_subscribed=self._announce,
        )
        self.door.transport = self.transport
        self.transport.start()
        return self.transport

    def _ha_routes(self) -> dict[str, Any]:
        """What the node hears from Home Assistant: its birth message and the button."""
        ha = self.cfg.homeassistant
        if not ha.discovery:
            return {}
        return {
            ha_status(ha.prefix): lambda _t, p: self._announce(p),
            self.topics.sweep_command: lambda _t, _p: self.on_signal("press"),
        }

    def _admin_routes(self) -> dict[str, Any]:
        assert self.slot is not None
        return {self.topics.model_command: ModelCommand(self.slot, self._refresh).on_message}

    def _refresh(self) -> None:
        if self.transport is not None:
            self.transport.set_status(self._status("online"))

    def _announce(self, ha_said: bytes = b"online") -> None:
        """After every (re)subscribe, and when Home Assistant says "online" after its restart
        (as its docs ask): publish the retained discovery message, or, with discovery off, an
        empty retained one that removes the device. The node keeps no record of what it
        announced before: clearing costs one message and always finds what an earlier run left."""
        if self.transport is None or ha_said.strip() != b"online":
            return
        ha = self.cfg.homeassistant
        topic = self.topics.ha_config(ha.prefix)
        if not ha.discovery:
            self.transport.retain(topic, ha_discovery.REMOVE)
            log.info("ha_discovery_removed", topic=topic)
            return
        info = self.slot.info if self.slot is not None else None
        model = info.name if info is not None else self.cfg.model.name
        payload = ha_discovery.config_payload(self.topics, model, __version__)
        self.transport.retain(topic, payload)
        log.info("ha_discovery_published", topic=topic, bytes=len(payload))

    def _on_model(self) -> None:
        """The slot loaded, swapped or unloaded the model: what follows the model follows."""
        assert self.slot is not None and self.intake is not None
        engine, info = self.slot.engine, self.slot.info
        self.intake.engine = engine
        if self.steering is not None:
            self.steering.stop()
            self.steering = None
        if self.cfg.governor.enabled and engine is not None and info is not None:
            self._sensors = self._sensors or make_sensors(self.cfg.monitor)
            self.steering = Steering(self.cfg, engine, info, self._sensors, self._publish_telemetry)
            self.steering.start()
        if self.wyoming is not None and info is not None:
            self.wyoming.follow(info.name, info.metadata)
        if self.intake.accepting:
            self._refresh()
            self._announce()

    def _start_wyoming(self, intake: Intake, info: ModelInfo) -> None:
        """The Wyoming front door, once the model is ready; a taken port leaves MQTT alone."""
        if not self.cfg.wyoming.enabled:
            return
        door = WyomingDoor(self.cfg, intake, self.counters, info.name, info.metadata)
        self.wyoming = door if door.start() else None

    def _serve(self, t0: float) -> tuple[int, bytes | None]:
        """The main loop until stopped: the exit code, and the offline status to leave."""
        assert self.transport is not None
        ready = False
        sweep_published = None
        last_ping = 0.0
        while not self.stop_event.wait(0.1):
            now = time.monotonic()
            if self.transport.fatal_event.is_set():
                log.error("mqtt_fatal", error=self.transport.fatal)
                return EXIT_MQTT, None
            if (failure := self._failure()) is not None:
                # Never a dead worker behind an `online` status: say why, exit, get restarted.
                return EXIT_ENGINE, self._status("offline", failure)
            if (engine := self.engine) is not None:
                engine.expire_waiting()
                engine.memory.expire()
            if not ready and self.transport.ready.is_set():
                # READY only once the model is loaded and the request topic is subscribed.
                ready = True
                self.notifier.ready(self._status_line())
                log.info(
                    "ready",
                    startup_ms=round((now - t0) * 1000, 1),
                    request_topic=self.topics.request,
                )
            if engine is not None and engine.sweep is not sweep_published:
                sweep_published = engine.sweep
                self._refresh()
            self._take_signals()
            interval = self.notifier.watchdog_interval_s
            if interval is not None and now - last_ping >= interval:
                last_ping = now
                self._watchdog(now, 2 * interval)
        return EXIT_OK, None

    def _failure(self) -> str | None:
        """Why no model can serve any more (the service exits to be restarted), or None."""
        engine = self.engine
        if engine is not None and engine.failed.is_set():
            return engine.failure
        return self.slot.failure if self.slot is not None else None

    def _take_signals(self) -> None:
        while self._signals:
            signalled = self._signals.popleft()
            if signalled == "stop":
                self.stop_event.set()
            elif signalled == "reload":
                self.reload()
            elif signalled in ("sweep", "press") and self.engine:  # SIGUSR1, HA's button
                log.info("thread_sweep_requested", source="home_assistant" * (signalled == "press"))
                self.engine.request_sweep()

    def _status_line(self) -> str:
        engine, info = self.engine, self.slot and self.slot.info
        if engine is None or not info:
            return f"no model loaded ({self.slot and self.slot.state}) on {self.topics.request}"
        return (
            f"serving {info.name} on {self.topics.request}: "
            f"{engine.threads} threads, n_ctx {engine.n_ctx}, "
            f"{self.counters['done']} done"
        )

    def _watchdog(self, now: float, watchdog_s: float) -> None:
        """Ping only while the inference worker shows progress; a wedged worker stops the pings.

        The worker beats between jobs (every 0.5 s) and between tokens. If it has been silent for
        half of WatchdogSec, the daemon asks systemd to act now (WATCHDOG=trigger) rather than
        waiting for the pings to run out: a wedge is then caught within WatchdogSec.
        """
        engine = self.engine  # None while a model loads: the load has its own time limit
        if engine is None or worker_alive(engine.heartbeat, now, watchdog_s / 2):
            self.notifier.watchdog()
            self.notifier.status(self._status_line())
        else:
            log.error("engine_wedged", silent_s=round(now - engine.heartbeat, 1))
            self.notifier.watchdog_trigger()

    def on_signal(self, what: str) -> None:
        """Note a signal ("stop", "reload", "sweep") for the main loop; safe in a handler.

        A handler must not take a lock: Event.set() there can deadlock against the main
        thread's own Event.wait() on the same event (it holds the event's lock when the
        handler runs). deque.append takes none.
        """
        self._signals.append(what)

    def reload(self) -> None:
        """Re-read config.yaml: apply what can change live, report what needs a restart."""
        assert self.slot is not None and self.transport is not None
        self.notifier.reloading()
        try:
            new = config.load(self._config_path, self._overrides)
        except config.ConfigError as err:
            log.error("reload_failed", error=str(err))
            self.notifier.ready("reload failed, running on the previous config")
            return
        plan = plan_reload(self.cfg, new)
        self.cfg = plan.config
        if any(k.startswith("logging.") for k in plan.applied):
            logsetup.configure(self.cfg.logging.level, self.cfg.logging.format)
        self.slot.cfg = self.cfg  # the next model loads with it
        if (engine := self.engine) is not None:
            engine.update_settings(self.cfg.generation, self.cfg.limits, self.cfg.policy)
        assert self.intake is not None and self.door is not None
        self.intake.reconfigure(self.cfg)
        self.door.cfg = self.cfg
        if self.wyoming is not None:
            self.wyoming.cfg = self.cfg
        if self.steering is not None:
            self.steering.reconfigure(self.cfg)
        if engine and ("model.n_threads" in plan.applied or "model.n_ctx" in plan.applied):
            engine.set_limits(
                threads=self.cfg.model.n_threads or default_threads(), n_ctx=self.cfg.model.n_ctx
            )
        log.info("reloaded", applied=list(plan.applied), needs_restart=list(plan.needs_restart))
        self._refresh()
        restart = (
            f"; restart needed for {', '.join(plan.needs_restart)}" if plan.needs_restart else ""
        )
        self.notifier.ready(self._status_line() + restart)

    def shutdown(self, offline: bytes | None = None) -> None:
        """Stop taking requests, finish or cancel the current one, go offline, disconnect."""
        log.info("shutdown_begin")
        if self.intake is not None:
            self.intake.accepting = False
        if self.http is not None:
            # Not listening any more; streams in flight end with their jobs just below.
            self.http.stop()
        if self.steering is not None:
            self.steering.stop()
        if self.engine is not None:
            self.engine.stop(self.cfg.limits.shutdown_grace_s)
            log.info("shutdown_engine_stopped")
        if self.wyoming is not None:
            # After the engine: the running generation's answer has gone out on its connection.
            self.wyoming.stop()
        if self.transport is not None:
            self.transport.stop(offline=offline)
        log.info("shutdown_done", **dict(self.counters))

    def _publish_telemetry(self, body: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.publish(self.topics.telemetry, telemetry_payload(body), qos=0)
