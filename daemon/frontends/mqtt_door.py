"""The MQTT front door: parses what arrives into Requests for intake, encodes the replies.

An adapter like the HTTP and Wyoming doors; the connection itself is frontends/mqtt.py's.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import structlog

from daemon.config import Config
from daemon.frontends.mqtt import Transport
from daemon.frontends.mqtt_messages import (
    Incoming,
    delta_payload,
    done_payload,
    error_payload,
    parse_cancel,
    parse_request,
)
from daemon.frontends.topics import Topics
from daemon.intake import Intake, log_request
from daemon.requests import SESSION_PATTERN, Done, ErrorCode, Rejection, ReplyAddress, Request
from daemon.safeguards.policy import reply_topic_allowed

log = structlog.get_logger(__name__)
_SESSION_RE = re.compile(SESSION_PATTERN)


class MqttFrontDoor:
    """Parses what arrives into Requests for intake; encodes the replies as MQTT payloads.

    Runs on paho's network thread: parse and queue, never block.
    """

    def __init__(self, cfg: Config, topics: Topics, intake: Intake, counters: Counter):
        self.cfg = cfg  # replaced on a reload (reply_qos and policy.reply_topics are live)
        self._topics = topics
        self._intake = intake
        self._counters = counters
        self.transport: Transport | None = None

    def _publish(self, reply: ReplyAddress, payload: bytes, qos: int | None = None) -> None:
        assert self.transport is not None
        qos = self.cfg.mqtt.reply_qos if qos is None else qos
        self.transport.publish(reply.topic, payload, qos, reply.correlation)

    def _reply_filters(self) -> list[str]:
        """Where replies may go: this node's reply tree (and its fleet's), plus what
        policy.reply_topics adds."""
        fleet = [self._topics.fleet_replies] if self._topics.group is not None else []
        return [self._topics.replies, *fleet, *(self.cfg.policy.reply_topics or [])]

    def _hand_back(self, msg: Incoming) -> bool:
        """Give a fleet request back to the group when this node could not start it soon.

        mosquitto hands a shared subscription's messages to its members in turn, busy or not
        (bench/fleet_broker.py; Receive Maximum only queues them behind the busy one), so the
        node itself sends on what it cannot start within fleet.start_within_s. After
        fleet.max_hops hand-backs a node takes it whatever its queue: every node is busy.
        """
        hops = msg.fleet_hops
        if hops is None or hops >= self.cfg.fleet.max_hops or self.transport is None:
            return False
        engine = self._intake.engine
        backlog = engine.backlog_s() if engine is not None else None
        soon = backlog is not None and backlog <= self.cfg.fleet.start_within_s
        if self._intake.accepting and soon:
            return False
        self._counters["fleet_handed_back"] += 1
        log.info("fleet_hand_back", hops=hops + 1, backlog_s=backlog, client=msg.client)
        self.transport.hand_back(msg)
        return True

    def on_request(self, msg: Incoming) -> None:
        """A message on a request topic: parse it, check its reply topic, hand it to intake."""
        if self._hand_back(msg):
            return
        parsed = parse_request(msg, self._topics, self.cfg.limits)
        if isinstance(parsed, Rejection):
            self.refuse(parsed)
            return
        req = parsed
        if not reply_topic_allowed(self._reply_filters(), req.reply.topic):
            # The confused deputy: never publish model output onto a topic the policy does not
            # list (another device's command topic, say), whatever the broker would allow.
            self._counters["reply_topic_refused"] += 1
            log.warning("reply_topic_refused", id=req.id, client=req.client)
            default = ReplyAddress(msg.default_reply(self._topics, req.id), req.reply.correlation)
            self.refuse(
                Rejection(
                    ErrorCode.BAD_REQUEST,
                    "reply topic not allowed by this node's policy: use "
                    f"{self._topics.replies.removesuffix('#')}...",
                    req.id,
                    default,
                )
            )
            return
        self._intake.take(req, self)

    def on_cancel(self, payload: bytes, client: str) -> None:
        """A message on a cancel topic; client is the topic's last level (bound by the ACL)."""
        rid = parse_cancel(payload)
        if rid is None:
            log.warning("cancel_ignored", reason="no valid id")
            return
        # A client cancels only its own requests: on a LAN broker the ACL binds the cancel
        # topic's last level to the user, so one user cannot stop another's by guessing ids.
        self._intake.cancel(rid, client)

    def routes(self) -> dict[str, Callable[[str, bytes], None]]:
        """The topics this door hears beside requests and cancels: session resets."""
        return {f: self.on_session_reset for f in self._topics.session_resets}

    def on_session_reset(self, topic: str, _payload: bytes) -> None:
        """A message on ``<base>/session/<id>/reset[/<client>]``: forget that session. Like a
        cancel, the topic's last level (bound by the ACL) says whose session it is."""
        found = self._topics.session_reset_of(topic)
        if found is None or not _SESSION_RE.fullmatch(found[0]):
            log.warning("session_reset_ignored", reason="not a session reset topic")
            return
        self._intake.reset_session(found[1], found[0])

    # -- intake.Answers ------------------------------------------------------------------------

    def delta(self, request: Request, seq: int, text: str) -> None:
        reply = request.reply
        qos = self.cfg.mqtt.delta_qos if reply.delta_qos is None else reply.delta_qos
        self._publish(reply, delta_payload(request.id, seq, text), qos)

    def done(self, request: Request, done: Done) -> bytes:
        payload = done_payload(request.id, done, node=self._topics.node_id)
        self._publish(request.reply, payload)
        return payload

    def error(self, request: Request, code: ErrorCode, message: str, extra: dict) -> bytes:
        payload = error_payload(request.id, code, message, {**extra, "node": self._topics.node_id})
        self._publish(request.reply, payload)
        return payload

    def again(self, request: Request, payload: bytes) -> None:
        self._publish(request.reply, payload)

    def refuse(self, rejection: Rejection) -> None:
        self._counters[f"rejected_{rejection.code}"] += 1
        reply = rejection.reply
        if reply is not None and not reply_topic_allowed(self._reply_filters(), reply.topic):
            self._counters["reply_topic_refused"] += 1
            log.warning("reply_topic_refused", id=rejection.id)
            rid = rejection.id
            default = self._topics.response_for(rejection.client, rid) if rid else None
            reply = ReplyAddress(default, reply.correlation) if default else None
        if reply is None:
            # Nowhere to answer: log and count, never guess a topic.
            log.warning(
                "request_rejected_unanswerable", code=str(rejection.code), detail=rejection.message
            )
            return
        self._publish(reply, error_payload(rejection.id, rejection.code, rejection.message))
        log_request(rejection.id, rejection.client, str(rejection.code), detail=rejection.message)
