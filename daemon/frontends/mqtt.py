"""The MQTT front door: the connection (last will, resubscribe on every connect, publish) and
the adapter that turns MQTT messages into intake calls and replies into MQTT payloads.

Only this module and frontends/client.py import paho.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.config import MqttConfig
from daemon.frontends.mqtt_identity import Duplicates, advice
from daemon.frontends.mqtt_messages import (
    FLEET_HOPS,
    INSTANCE,
    Incoming,
    hops_of,
    status_payload,
)
from daemon.frontends.topics import Topics

log = structlog.get_logger(__name__)

# CONNACK reason codes that retrying cannot fix (MQTT 5 spec 3.2.2.2; paho maps 3.1.1's 4/5 here).
_FATAL_CONNACK = {134: "bad user name or password", 135: "not authorized"}


def _nodelay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    # Without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to each QoS 1 exchange on loopback.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(
    cfg: MqttConfig, client_id: str, password: str | None, *, v5: bool | None = None
) -> mqtt.Client:
    """A paho client set up from config (protocol, auth, TLS, TCP_NODELAY); not yet connected."""
    use_v5 = cfg.protocol == "5" if v5 is None else v5
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if use_v5 else mqtt.MQTTv311,
    )
    client.on_socket_open = _nodelay
    if cfg.username is not None:
        client.username_pw_set(cfg.username, password)
    if cfg.tls.enabled:
        client.tls_set(
            ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
            certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
            keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client


class Transport:
    """Owns the daemon's MQTT connection and hands requests and cancels to the service."""

    def __init__(
        self,
        cfg: MqttConfig,
        topics: Topics,
        client_id: str,
        password: str | None,
        on_request: Callable[[Incoming], None],
        on_cancel: Callable[[bytes, str], None],
        offline_payload: bytes,
        routes: dict[str, Callable[[str, bytes], None]] | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ):
        """routes: further topic filters to subscribe to and who takes their (non-retained)
        messages, as (topic, payload);
        on_subscribed: called after every successful (re)subscribe."""
        self._cfg = cfg
        self._routes = routes or {}
        self._on_subscribed = on_subscribed
        # A reply's MQTT v5 Message Expiry: a stream to a client that vanished is dropped by
        # the broker after this instead of piling up in a persistent session.
        self._reply_expiry = cfg.reply_expiry_s
        self._topics = topics
        self._on_request = on_request
        self._on_cancel = on_cancel
        self._v5 = cfg.protocol == "5"
        # Shared subscriptions are MQTT v5 (spec 4.8.2): under 3.1.1 the node stays single.
        self._fleet = topics.group is not None and self._v5
        if topics.group is not None and not self._v5:
            log.warning("fleet_needs_mqtt5", group=topics.group, protocol=cfg.protocol)
        self._status: bytes | None = None
        # Orders set_status() against the SUBACK handler, so `online` is published exactly
        # once the model is ready and the request topic is subscribed, whichever comes last.
        self._status_lock = threading.Lock()
        self._offline = offline_payload
        self.ready = threading.Event()
        self.fatal: str | None = None
        self.fatal_event = threading.Event()
        self._sub_mid: int | None = None
        self._duplicates = Duplicates(INSTANCE)  # another live process with this node id
        self._resign = False
        self._client = make_client(cfg, client_id, password)
        self._client.will_set(topics.status, offline_payload, qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._guard(self._handle_connect)
        self._client.on_disconnect = self._guard(self._handle_disconnect)
        self._client.on_subscribe = self._guard(self._handle_subscribe)
        self._client.on_message = self._guard(self._handle_message)

    def start(self) -> None:
        """Connect in the background; paho's thread reconnects with back-off."""
        kwargs: dict[str, Any] = {"keepalive": self._cfg.keepalive_s}
        if self._v5:
            kwargs["clean_start"] = True
        self._client.connect_async(self._cfg.host, self._cfg.port, **kwargs)
        self._client.loop_start()
        log.info(
            "mqtt_connecting", host=self._cfg.host, port=self._cfg.port, protocol=self._cfg.protocol
        )

    def set_status(self, payload: bytes) -> None:
        """Remember the retained status; it is published after every (re)subscribe."""
        with self._status_lock:
            self._status = payload
            if self.ready.is_set():
                self._client.publish(self._topics.status, payload, qos=1, retain=True)

    def publish(
        self, topic: str, payload: bytes, qos: int, correlation: bytes | None = None
    ) -> None:
        """Publish a reply; echo MQTT v5 correlation data when there is some."""
        props = None
        if self._v5 and (correlation is not None or self._reply_expiry is not None):
            props = Properties(PacketTypes.PUBLISH)
            if correlation is not None:
                props.CorrelationData = correlation
            if self._reply_expiry is not None:
                props.MessageExpiryInterval = self._reply_expiry
        self._client.publish(topic, payload, qos=qos, properties=props)

    def retain(self, topic: str, payload: bytes) -> None:
        """Publish a retained message (QoS 1, no expiry: it must outlive any reply)."""
        self._client.publish(topic, payload, qos=1, retain=True)

    def stop(self, timeout: float = 3.0, offline: bytes | None = None) -> None:
        """Publish the retained offline status (offline: one with a reason), then disconnect."""
        self.ready.clear()
        if self._client.is_connected():
            payload = offline or self._offline
            if self._resign:
                # Its own `online` may be the retained status: step down in its place, marked so
                # that the other process does not take it for a third (mqtt_identity.py).
                details = {"node_id": self._topics.node_id, "resigned": True}
                payload = status_payload("offline", {**details, "reason": "node id in use"})
            info = self._client.publish(self._topics.status, payload, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("mqtt_offline_not_confirmed")
        self._client.disconnect()
        self._client.loop_stop()
        log.info("mqtt_disconnected")

    # -- paho callbacks (network thread) --------------------------------------------------------

    def _guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        # An exception escaping a paho callback would stop the network loop for good.
        def wrapped(*args: Any) -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("mqtt_callback_failed", callback=fn.__name__)

        return wrapped

    def _handle_connect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            reason = _FATAL_CONNACK.get(rc.value)
            if reason is not None:
                # Retrying with the same credentials only hammers the broker (HA does the same).
                self.fatal = f"broker refused the connection: {reason}"
                log.error("mqtt_auth_failed", reason=reason)
                client.disconnect()
                self.fatal_event.set()
            else:
                log.warning("mqtt_connect_refused", reason=str(rc))
            return
        log.info("mqtt_connected")
        # Subscribing here renews the subscriptions after every reconnect (paho's README).
        topics = self._topics
        filters = [topics.request, topics.client_requests, topics.cancel, topics.client_cancels]
        filters.append(topics.status)  # its own: another process serving this node id shows there
        if self._fleet:
            filters += [*topics.fleet_shares, *topics.fleet_cancels]
        filters += list(self._routes)
        _rc, self._sub_mid = client.subscribe([(f, 1) for f in filters])

    def _handle_subscribe(
        self, client: mqtt.Client, _u: Any, mid: int, codes: Any, _p: Any
    ) -> None:
        if mid != self._sub_mid:
            return
        failed = [c for c in codes if getattr(c, "is_failure", False)]
        if failed:
            log.error("mqtt_subscribe_refused", reasons=[str(c) for c in failed])
            return
        with self._status_lock:
            if self._status is not None:
                client.publish(self._topics.status, self._status, qos=1, retain=True)
            self.ready.set()
        if self._on_subscribed is not None:
            self._on_subscribed()
        log.info(
            "mqtt_subscribed",
            request=self._topics.request,
            fleet=self._topics.fleet_request if self._fleet else None,
        )

    def _handle_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.ready.clear()
        if rc.is_failure:
            log.warning("mqtt_connection_lost", reason=str(rc))
            why = self._duplicates.connection_lost(rc.value)
            if why is not None:
                self._stop_fighting(why)

    def _stop_fighting(self, why: str) -> None:
        """Another live process serves this node id: say so once, take no more requests, and
        let the service stop (code 4: systemd does not restart it); stop() then steps down."""
        if self.fatal_event.is_set():
            return
        self.fatal = advice(self._topics.node_id, why)
        self._resign = True
        log.error("mqtt_duplicate_node", node_id=self._topics.node_id, error=self.fatal)
        self.fatal_event.set()

    def _handle_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        received = time.monotonic()
        payload = bytes(msg.payload)
        if self._resign:
            return  # another process serves this node id: it answers, not this one
        if msg.topic == self._topics.status:
            why = self._duplicates.status_seen(payload)
            if why is not None:
                self._stop_fighting(why)
            return
        routes = self._routes.items()
        route = next((r for f, r in routes if mqtt.topic_matches_sub(f, msg.topic)), None)
        if route is not None:
            # A retained command would run again at every reconnect: only live ones count.
            if not msg.retain:
                route(msg.topic, payload)
            return
        topics = self._topics
        canceller = topics.client_of(msg.topic, "cancel")
        if canceller is None and self._fleet:
            canceller = topics.fleet_client_of(msg.topic, "cancel")
        if canceller is not None:
            self._on_cancel(payload, canceller)
            return
        hops = None
        client = topics.client_of(msg.topic)
        if client is None and self._fleet:
            client = topics.fleet_client_of(msg.topic)
            hops = 0
        if client is None:
            return
        response_topic = correlation = expiry = None
        props = getattr(msg, "properties", None)
        if props is not None:
            response_topic = getattr(props, "ResponseTopic", None)
            correlation = getattr(props, "CorrelationData", None)
            expiry = getattr(props, "MessageExpiryInterval", None)
            if hops is not None:
                hops = hops_of(getattr(props, "UserProperty", None))
        incoming = Incoming(payload, response_topic, correlation, received, expiry, client, hops)
        self._on_request(incoming)

    def hand_back(self, msg: Incoming) -> None:
        """Publish a fleet request back to the group's topic, one hop more: the broker hands it
        to another member (mosquitto 2.0 takes members in turn; see docs/FLEET.md)."""
        props = Properties(PacketTypes.PUBLISH)
        if msg.response_topic is not None:
            props.ResponseTopic = msg.response_topic
        if msg.correlation is not None:
            props.CorrelationData = msg.correlation
        if msg.expiry_s:
            props.MessageExpiryInterval = msg.expiry_s
        props.UserProperty = [(FLEET_HOPS, str((msg.fleet_hops or 0) + 1))]
        topics = self._topics
        topic = topics.fleet_client_request(msg.client) if msg.client else topics.fleet_request
        self._client.publish(topic, msg.payload, qos=1, properties=props)
