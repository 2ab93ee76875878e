"""The composition root: builds the parts, owns the stop event and the ordered shutdown."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog

from daemon import __version__, models
from daemon.config import Config, mqtt_password
from daemon.engine import DuplicateId, Engine, EngineError, ModelInfo
from daemon.jobs import Job, QueueFull
from daemon.messages import (
    Done,
    ErrorCode,
    Incoming,
    Rejection,
    Request,
    delta_payload,
    done_payload,
    error_payload,
    parse_cancel,
    parse_request,
    status_payload,
)
from daemon.topics import Topics
from daemon.transport import Transport

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_MODEL = 3
EXIT_MQTT = 4


class MqttSink:
    """Publishes a job's replies to its reply address and writes the one log line per request."""

    def __init__(self, transport: Transport, qos: int, log_prompts: bool, counters: Counter):
        self._transport = transport
        self._qos = qos
        self._log_prompts = log_prompts
        self._counters = counters

    def _send(self, req: Request, payload: bytes) -> None:
        self._transport.publish(req.reply.topic, payload, self._qos, req.reply.correlation)

    def delta(self, request: Request, seq: int, text: str) -> None:
        self._send(request, delta_payload(request.id, seq, text))

    def done(self, request: Request, done: Done) -> None:
        self._send(request, done_payload(request.id, done))
        self._counters["done"] += 1
        fields: dict[str, Any] = {
            "id": request.id,
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
        self._send(request, error_payload(request.id, code, message, extra))
        self._counters[str(code)] += 1
        log.info(
            "request",
            id=request.id,
            outcome=str(code),
            detail=message,
            **{k: v for k, v in extra.items() if k == "usage"},
        )


class Service:
    """One edgellm node: a model, a broker connection, and the glue between them."""

    def __init__(self, cfg: Config, model_path: Path | None = None):
        self.cfg = cfg
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.node_id)
        self.stop_event = threading.Event()
        self.counters: Counter = Counter()
        self._model_path = model_path
        self.engine: Engine | None = None
        self.transport: Transport | None = None
        self.info: ModelInfo | None = None
        self._accepting = False

    def status_details(self) -> dict[str, Any]:
        info = self.info
        details: dict[str, Any] = {"node_id": self.cfg.node_id, "version": __version__}
        if info is not None:
            details.update(
                model=info.name,
                chat=info.chat,
                n_ctx=info.n_ctx,
                threads=info.n_threads,
            )
        details["request_topic"] = self.topics.request
        return details

    def run(self) -> int:
        """Start, serve until stop_event is set, shut down in order; return the exit code."""
        t0 = time.monotonic()
        try:
            path = self._model_path or models.locate(self.cfg.model.name, self.cfg.model.dir)
        except models.ModelError as err:
            log.error("model_unavailable", error=str(err))
            return EXIT_MODEL
        self.engine = Engine(
            path, self.cfg.model.name, self.cfg.model, self.cfg.generation, self.cfg.limits
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
        try:
            self.info = self.engine.start()
        except EngineError as err:
            log.error("model_load_failed", error=str(err))
            self.transport.stop()
            return EXIT_MODEL
        self._accepting = True
        self.transport.set_status(status_payload("online", self.status_details()))
        code = EXIT_OK
        ready_logged = False
        while not self.stop_event.wait(0.1):
            if self.transport.fatal_event.is_set():
                log.error("mqtt_fatal", error=self.transport.fatal)
                code = EXIT_MQTT
                break
            if not ready_logged and self.transport.ready.is_set():
                ready_logged = True
                log.info(
                    "ready",
                    startup_ms=round((time.monotonic() - t0) * 1000, 1),
                    request_topic=self.topics.request,
                )
        self.shutdown()
        return code

    def shutdown(self) -> None:
        """Stop taking requests, finish or cancel the current one, go offline, disconnect."""
        log.info("shutdown_begin")
        self._accepting = False
        if self.engine is not None:
            self.engine.stop(self.cfg.limits.shutdown_grace_s)
            log.info("shutdown_engine_stopped")
        if self.transport is not None:
            self.transport.stop()
        log.info("shutdown_done", **dict(self.counters))

    # -- transport callbacks (paho's network thread): parse and queue, never block ----------------

    def _on_request(self, msg: Incoming) -> None:
        assert self.engine is not None and self.transport is not None
        parsed = parse_request(msg, self.topics, self.cfg.limits)
        sink = MqttSink(
            self.transport, self.cfg.mqtt.reply_qos, self.cfg.logging.log_prompts, self.counters
        )
        if isinstance(parsed, Rejection):
            self._reject(parsed)
            return
        job = Job(parsed, sink)
        if not self._accepting:
            job.finish_error(ErrorCode.BUSY, "the daemon is not accepting requests right now")
            return
        try:
            self.engine.submit(job)
        except QueueFull:
            job.finish_error(
                ErrorCode.BUSY,
                f"queue is full ({self.cfg.limits.queue_size} waiting); try again later",
                {"queue_depth": self.engine.queue_depth},
            )
        except DuplicateId:
            # Not the job's own reply: the original request still gets its one terminal reply.
            self._reject(
                Rejection(
                    ErrorCode.BAD_REQUEST,
                    "a request with this id is already queued or running",
                    parsed.id,
                    parsed.reply,
                )
            )

    def _reject(self, rej: Rejection) -> None:
        assert self.transport is not None
        self.counters[f"rejected_{rej.code}"] += 1
        if rej.reply is None:
            # Nowhere to answer: log and count, never guess a topic.
            log.warning("request_rejected_unanswerable", code=str(rej.code), detail=rej.message)
            return
        self.transport.publish(
            rej.reply.topic,
            error_payload(rej.id, rej.code, rej.message),
            self.cfg.mqtt.reply_qos,
            rej.reply.correlation,
        )
        log.info("request", id=rej.id, outcome=str(rej.code), detail=rej.message)

    def _on_cancel(self, payload: bytes) -> None:
        assert self.engine is not None
        rid = parse_cancel(payload)
        if rid is None:
            log.warning("cancel_ignored", reason="no valid id")
            return
        found = self.engine.cancel(rid)
        log.info("cancel", id=rid, found=found)
