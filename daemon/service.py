"""The composition root: builds the parts, owns the stop event and the ordered shutdown."""

from __future__ import annotations

import collections
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

from daemon import __version__, config, cpuprobe, logsetup, models
from daemon.config import Config, mqtt_password
from daemon.dedupe import Key, RecentRequests
from daemon.engine import (
    DuplicateId,
    Engine,
    EngineError,
    ModelInfo,
    WouldMissDeadline,
    default_threads,
)
from daemon.jobs import Job, QueueFull
from daemon.messages import (
    Done,
    ErrorCode,
    Incoming,
    Rejection,
    ReplyAddress,
    Request,
    delta_payload,
    done_payload,
    error_payload,
    parse_cancel,
    parse_request,
    status_payload,
    telemetry_payload,
)
from daemon.monitor import make_sensors
from daemon.policy import client_allowed, load_classifier, reply_topic_allowed
from daemon.ratelimit import RateLimiter
from daemon.reload import plan_reload
from daemon.sdnotify import Notifier, worker_alive
from daemon.steering import Steering
from daemon.topics import Topics
from daemon.transport import Transport

log = structlog.get_logger(__name__)

# An error reply for a request that never ran says so (the protocol promises text and usage).
_NOTHING = {"usage": {"prompt_tokens": 0, "completion_tokens": 0}, "text": ""}

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_MODEL = 3
EXIT_MQTT = 4
# llama.cpp dies on this CPU whichever way the weights are loaded: a restart cannot fix it.
EXIT_CPU = 5
# The inference worker failed and could not recover: systemd restarts a fresh process.
EXIT_ENGINE = 6


class MqttSink:
    """Publishes a job's replies to its reply address and writes the one log line per request.

    The terminal reply is also remembered for duplicates of the request (dedupe) and its
    generated tokens are charged to the client's rate limit.
    """

    def __init__(self, service: Service, key: Key):
        assert service.transport is not None
        self._transport = service.transport
        self._qos = service.cfg.mqtt.reply_qos
        self._log_prompts = service.cfg.logging.log_prompts
        self._counters = service.counters
        self._recent = service.recent
        self._limiter = service.limiter
        self._key = key

    def _send(self, req: Request, payload: bytes) -> None:
        self._transport.publish(req.reply.topic, payload, self._qos, req.reply.correlation)

    def delta(self, request: Request, seq: int, text: str) -> None:
        self._send(request, delta_payload(request.id, seq, text))

    def done(self, request: Request, done: Done) -> None:
        payload = done_payload(request.id, done)
        self._send(request, payload)
        self._recent.finish(self._key, payload)
        self._limiter.charge_tokens(request.client, done.usage.completion_tokens)
        self._counters["done"] += 1
        fields: dict[str, Any] = {
            "id": request.id,
            "client": request.client,
            "outcome": "done",
            "finish": done.finish_reason,
            "prompt_tokens": done.usage.prompt_tokens,
            "completion_tokens": done.usage.completion_tokens,
            "queue_ms": round(done.timings.queue_ms, 1),
            "ttft_ms": round(done.timings.ttft_ms, 1),
            "total_ms": round(done.timings.total_ms, 1),
            "tokens_per_s": round(done.timings.tokens_per_s, 1),
            "stream": str(request.stream),
        }
        if self._log_prompts:
            fields["prompt"] = request.prompt or [m.content for m in request.messages or ()]
            fields["reply"] = done.text
        log.info("request", **fields)

    def error(self, request: Request, code: ErrorCode, message: str, extra: dict) -> None:
        payload = error_payload(request.id, code, message, extra)
        self._send(request, payload)
        if code in (ErrorCode.BUSY, ErrorCode.RATE_LIMITED):
            self._recent.forget(self._key)  # not run: a retry must be able to run
        else:
            self._recent.finish(self._key, payload)
        usage = extra.get("usage") or {}
        if usage.get("completion_tokens"):
            self._limiter.charge_tokens(request.client, usage["completion_tokens"])
        self._counters[str(code)] += 1
        log.info(
            "request",
            id=request.id,
            client=request.client,
            outcome=str(code),
            detail=message,
            **{k: v for k, v in extra.items() if k == "usage"},
        )


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
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.node_id)
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
        self.engine: Engine | None = None
        self.transport: Transport | None = None
        self.info: ModelInfo | None = None
        self.steering: Steering | None = None
        self._accepting = False
        self.verdict: cpuprobe.Verdict | None = None
        self.recent = RecentRequests(cfg.limits.dedupe_window_s)
        self.limiter = RateLimiter(cfg.policy.rate_limit)

    def status_details(self) -> dict[str, Any]:
        info = self.info
        details: dict[str, Any] = {"node_id": self.cfg.node_id, "version": __version__}
        if info is not None and self.engine is not None:
            details.update(
                model=info.name,
                chat=info.chat,
                n_ctx=self.engine.n_ctx,
                threads=self.engine.threads,
            )
            if self.engine.sweep is not None:
                # The measured speed per thread count, recorded where anyone can read it.
                details["thread_sweep"] = {
                    str(n): tps for n, tps in self.engine.sweep.tokens_per_s.items()
                }
        if self.verdict is not None:
            details["cpu_repack"] = self.verdict.repack
        details["request_topic"] = self.topics.request
        return details

    def _reply_filters(self) -> list[str]:
        """Where replies may go: this node's reply tree, plus what policy.reply_topics adds."""
        return [self.topics.replies, *(self.cfg.policy.reply_topics or [])]

    def _decide_repack(self, path: Path) -> cpuprobe.Verdict:
        """Weight repacking on or off, probing this CPU once (see daemon/cpuprobe.py)."""
        self.notifier.status("checking that llama.cpp runs on this CPU")
        verdict = cpuprobe.decide(self.cfg.model.cpu_repack, path)
        log.info(
            "cpu_verdict",
            repack=verdict.repack,
            source=verdict.source,
            probed=verdict.modes,
            probe_s=round(verdict.probe_s, 2),
        )
        return verdict

    def run(self) -> int:
        """Start, serve until stop_event is set, shut down in order; return the exit code."""
        t0 = time.monotonic()
        try:
            path = self._model_path or models.locate(self.cfg.model.name, self.cfg.model.dir)
        except models.ModelError as err:
            log.error("model_unavailable", error=str(err))
            return EXIT_MODEL
        try:
            self.verdict = self._decide_repack(path)
            classifier = load_classifier(self.cfg.policy.classifier)
        except cpuprobe.CpuUnsupported as err:
            log.error("cpu_unsupported", error=str(err))
            return EXIT_CPU
        except ValueError as err:
            log.error("classifier_unavailable", error=str(err))
            return EXIT_CONFIG
        self.engine = self._engine_factory(
            path,
            self.cfg.model.name,
            self.cfg.model,
            self.cfg.generation,
            self.cfg.limits,
            repack=self.verdict.repack,
            policy=self.cfg.policy,
            classifier=classifier,
        )
        # Connect while the model loads: both take a moment and neither needs the other.
        self.transport = Transport(
            self.cfg.mqtt,
            self.topics,
            self.cfg.mqtt.client_id or f"edgellm-{self.cfg.node_id}",
            mqtt_password(self.cfg.mqtt),
            on_request=self._on_request,
            on_cancel=self._on_cancel,
            offline_payload=status_payload("offline", {"node_id": self.cfg.node_id}),
        )
        self.transport.start()
        self.notifier.status("loading model")
        gov = self.cfg.governor
        try:
            self.info = self.engine.start(sweep_threads=gov.enabled and gov.thread_sweep)
        except EngineError as err:
            log.error("model_load_failed", error=str(err))
            self.transport.stop()
            return EXIT_MODEL
        if gov.enabled:
            sensors = make_sensors(self.cfg.monitor)
            self.steering = Steering(
                self.cfg, self.engine, self.info, sensors, self._publish_telemetry
            )
            self.steering.start()
        self._accepting = True
        self.transport.set_status(status_payload("online", self.status_details()))
        self.notifier.status("connecting to the broker")
        code = EXIT_OK
        ready = False
        sweep_published = None
        last_ping = 0.0
        offline: bytes | None = None
        while not self.stop_event.wait(0.1):
            now = time.monotonic()
            if self.transport.fatal_event.is_set():
                log.error("mqtt_fatal", error=self.transport.fatal)
                code = EXIT_MQTT
                break
            if self.engine.failed.is_set():
                # Never a dead worker behind an `online` status: say why, exit, get restarted.
                code = EXIT_ENGINE
                offline = status_payload(
                    "offline", {"node_id": self.cfg.node_id, "reason": self.engine.failure}
                )
                break
            self.engine.expire_waiting()
            if not ready and self.transport.ready.is_set():
                # READY only once the model is loaded and the request topic is subscribed.
                ready = True
                self.notifier.ready(self._status_line())
                log.info(
                    "ready",
                    startup_ms=round((now - t0) * 1000, 1),
                    request_topic=self.topics.request,
                )
            if self.engine.sweep is not sweep_published:
                sweep_published = self.engine.sweep
                self.transport.set_status(status_payload("online", self.status_details()))
            while self._signals:
                signalled = self._signals.popleft()
                if signalled == "stop":
                    self.stop_event.set()
                elif signalled == "reload":
                    self.reload()
                elif signalled == "sweep":
                    self.engine.request_sweep()
            interval = self.notifier.watchdog_interval_s
            if interval is not None and now - last_ping >= interval:
                last_ping = now
                self._watchdog(now, 2 * interval)
        self.notifier.stopping("shutting down")
        self.shutdown(offline)
        return code

    def _status_line(self) -> str:
        assert self.engine is not None
        return (
            f"serving {self.cfg.model.name} on {self.topics.request}: "
            f"{self.engine.threads} threads, n_ctx {self.engine.n_ctx}, "
            f"{self.counters['done']} done"
        )

    def _watchdog(self, now: float, watchdog_s: float) -> None:
        """Ping only while the inference worker shows progress; a wedged worker stops the pings.

        The worker beats between jobs (every 0.5 s) and between tokens. If it has been silent for
        half of WatchdogSec, the daemon asks systemd to act now (WATCHDOG=trigger) rather than
        waiting for the pings to run out: a wedge is then caught within WatchdogSec.
        """
        assert self.engine is not None
        if worker_alive(self.engine.heartbeat, now, watchdog_s / 2):
            self.notifier.watchdog()
            self.notifier.status(self._status_line())
        else:
            log.error("engine_wedged", silent_s=round(now - self.engine.heartbeat, 1))
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
        assert self.engine is not None and self.transport is not None
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
        self.engine.update_settings(self.cfg.generation, self.cfg.limits, self.cfg.policy)
        self.limiter.reconfigure(self.cfg.policy.rate_limit)
        self.recent.window_s = self.cfg.limits.dedupe_window_s
        if self.steering is not None:
            self.steering.reconfigure(self.cfg)
        if "model.n_threads" in plan.applied or "model.n_ctx" in plan.applied:
            self.engine.set_limits(
                threads=self.cfg.model.n_threads or default_threads(), n_ctx=self.cfg.model.n_ctx
            )
        log.info("reloaded", applied=list(plan.applied), needs_restart=list(plan.needs_restart))
        self.transport.set_status(status_payload("online", self.status_details()))
        restart = (
            f"; restart needed for {', '.join(plan.needs_restart)}" if plan.needs_restart else ""
        )
        self.notifier.ready(self._status_line() + restart)

    def shutdown(self, offline: bytes | None = None) -> None:
        """Stop taking requests, finish or cancel the current one, go offline, disconnect."""
        log.info("shutdown_begin")
        self._accepting = False
        if self.steering is not None:
            self.steering.stop()
        if self.engine is not None:
            self.engine.stop(self.cfg.limits.shutdown_grace_s)
            log.info("shutdown_engine_stopped")
        if self.transport is not None:
            self.transport.stop(offline=offline)
        log.info("shutdown_done", **dict(self.counters))

    # -- transport callbacks (paho's network thread): parse and queue, never block ----------------

    def _on_request(self, msg: Incoming) -> None:
        assert self.engine is not None and self.transport is not None
        parsed = parse_request(msg, self.topics, self.cfg.limits)
        if isinstance(parsed, Rejection):
            self._reject(parsed)
            return
        req = parsed
        if not reply_topic_allowed(self._reply_filters(), req.reply.topic):
            # The confused deputy: never publish model output onto a topic the policy does not
            # list (another device's command topic, say), whatever the broker would allow.
            self.counters["reply_topic_refused"] += 1
            log.warning("reply_topic_refused", id=req.id, client=req.client)
            self._reject(
                Rejection(
                    ErrorCode.BAD_REQUEST,
                    "reply topic not allowed by this node's policy: use "
                    f"{self.topics.replies.removesuffix('#')}...",
                    req.id,
                    ReplyAddress(
                        self.topics.response_for(req.client, req.id), req.reply.correlation
                    ),
                )
            )
            return
        if not client_allowed(self.cfg.policy.clients_allowed, req.client):
            self._reject(
                Rejection(ErrorCode.POLICY, "this client may not ask this node", req.id, req.reply)
            )
            return
        key = (req.client, req.id)
        seen = self.recent.check(key)
        if seen is not None:
            self.counters["duplicate"] += 1
            if seen.payload is not None:
                # Finished: the same terminal reply again, to this copy's address.
                self.transport.publish(
                    req.reply.topic, seen.payload, self.cfg.mqtt.reply_qos, req.reply.correlation
                )
            log.info("request_duplicate", id=req.id, client=req.client, finished=bool(seen.payload))
            return
        job = Job(req, MqttSink(self, key))
        self.recent.begin(key)
        self._admit(job)

    def _admit(self, job: Job) -> None:
        """Queue an accepted job, or answer why not (every path ends in one terminal reply)."""
        assert self.engine is not None
        req = job.request
        if not self._accepting:
            job.finish_error(ErrorCode.BUSY, "the daemon is not accepting requests right now")
            return
        retry_after = self.limiter.admit(req.client)
        if retry_after is not None:
            job.finish_error(
                ErrorCode.RATE_LIMITED,
                "too many requests from this client; slow down",
                {"retry_after_s": round(retry_after, 2)},
            )
            return
        if self.steering is not None and not self.steering.admit:
            # Refuse before the kernel's OOM killer decides for us.
            job.finish_error(
                ErrorCode.BUSY, "memory is critically low; try again later", {"reason": "memory"}
            )
            return
        try:
            self.engine.submit(job)
        except QueueFull:
            job.finish_error(
                ErrorCode.BUSY,
                f"queue is full ({self.cfg.limits.queue_size} waiting); try again later",
                {"queue_depth": self.engine.queue_depth},
            )
        except WouldMissDeadline as err:
            job.finish_error(
                ErrorCode.TIMEOUT,
                f"would not finish before its deadline (estimated wait {err.wait_s:.1f} s)",
                {"estimated_wait_s": round(err.wait_s, 2), **_NOTHING},
            )
        except DuplicateId:
            # Another client's request holds this id: not this job's reply to give.
            self.recent.forget((req.client, req.id))
            self._reject(
                Rejection(
                    ErrorCode.BAD_REQUEST,
                    "a request with this id is already queued or running",
                    req.id,
                    req.reply,
                )
            )

    def _publish_telemetry(self, body: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.publish(self.topics.telemetry, telemetry_payload(body), qos=0)

    def _reject(self, rej: Rejection) -> None:
        assert self.transport is not None
        self.counters[f"rejected_{rej.code}"] += 1
        reply = rej.reply
        if reply is not None and not reply_topic_allowed(self._reply_filters(), reply.topic):
            self.counters["reply_topic_refused"] += 1
            log.warning("reply_topic_refused", id=rej.id)
            default = self.topics.response_for(rej.client, rej.id) if rej.id else None
            reply = ReplyAddress(default, reply.correlation) if default else None
        if reply is None:
            # Nowhere to answer: log and count, never guess a topic.
            log.warning("request_rejected_unanswerable", code=str(rej.code), detail=rej.message)
            return
        self.transport.publish(
            reply.topic,
            error_payload(rej.id, rej.code, rej.message),
            self.cfg.mqtt.reply_qos,
            reply.correlation,
        )
        log.info("request", id=rej.id, outcome=str(rej.code), detail=rej.message)

    def _on_cancel(self, payload: bytes, client: str) -> None:
        assert self.engine is not None
        rid = parse_cancel(payload)
        if rid is None:
            log.warning("cancel_ignored", reason="no valid id")
            return
        # A client cancels only its own requests: on a LAN broker the ACL binds the cancel
        # topic's last level to the user, so one user cannot stop another's by guessing ids.
        found = self.engine.cancel(rid, client)
        log.info("cancel", id=rid, client=client, found=found)
