"""Every MQTT topic string is built here and nowhere else."""

from __future__ import annotations

import re
from dataclasses import dataclass

_WILDCARDS = frozenset("+#")
# What may not stand in a discovery object id (Home Assistant allows [a-zA-Z0-9_-]).
_LEVEL_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# The MQTT user name Home Assistant logs in as under the shipped broker ACL (deploy/mosquitto/acl).
HA_USER = "homeassistant"


def ha_status(ha_prefix: str) -> str:
    """Where Home Assistant announces itself ("online"/"offline": its birth and last will)."""
    return f"{ha_prefix}/status"


@dataclass(frozen=True)
class Topics:
    """The topic scheme of one node: ``<prefix>/<node_id>/<leaf>``."""

    prefix: str
    node_id: str
    # The fleet this node serves in (fleet.group); None: fleet mode off.
    group: str | None = None

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node_id}"

    @property
    def request(self) -> str:
        """Where clients publish prompts."""
        return f"{self.base}/request"

    @property
    def client_requests(self) -> str:
        """The filter of per-client request topics ``<base>/request/<client>``: the broker's ACL
        binds the last level to the user name (%u), so the daemon knows who asks."""
        return f"{self.base}/request/+"

    def client_request(self, client: str) -> str:
        """Where the client named ``client`` publishes prompts."""
        return f"{self.base}/request/{client}"

    def client_of(self, topic: str, leaf: str = "request") -> str | None:
        """The client a request (or cancel) topic names: '' for the plain topic, None if the
        topic is not one of that leaf."""
        return _client_under(f"{self.base}/{leaf}", topic)

    # -- fleet mode (docs/FLEET.md) ------------------------------------------------------------

    @property
    def fleet_base(self) -> str:
        """``<prefix>/fleet/<group>``: the topics the whole group shares."""
        if self.group is None:
            raise ValueError("fleet mode is off (fleet.group is not set)")
        return f"{self.prefix}/fleet/{self.group}"

    @property
    def fleet_request(self) -> str:
        """Where clients publish prompts for whichever node of the group can start them first."""
        return f"{self.fleet_base}/request"

    def fleet_client_request(self, client: str) -> str:
        """Where the client named ``client`` publishes prompts for the group."""
        return f"{self.fleet_base}/request/{client}"

    @property
    def fleet_shares(self) -> list[str]:
        """The MQTT v5 shared-subscription filters of the group's request topics: the broker
        hands each message to one member of share group <group> (MQTT 5.0 spec 4.8.2)."""
        return [f"$share/{self.group}/{t}" for t in (self.fleet_request, f"{self.fleet_request}/+")]

    def fleet_client_of(self, topic: str, leaf: str = "request") -> str | None:
        """The client a fleet request (or cancel) topic names, as client_of does for the node's."""
        return None if self.group is None else _client_under(f"{self.fleet_base}/{leaf}", topic)

    @property
    def fleet_cancels(self) -> list[str]:
        """The group's cancel topics: every member subscribes (not shared), the one running the
        request stops it, the others know no such id."""
        return [f"{self.fleet_base}/cancel", f"{self.fleet_base}/cancel/+"]

    @property
    def fleet_replies(self) -> str:
        """The group's reply tree: a fleet client names its reply topic here."""
        return f"{self.fleet_base}/response/#"

    def fleet_response_for(self, user: str | None, request_id: str) -> str:
        """The default reply topic of a fleet request that names no reply address."""
        if not user:
            return f"{self.fleet_base}/response/{request_id}"
        return f"{self.fleet_base}/response/{user}/{request_id}"

    @property
    def replies(self) -> str:
        """The filter of this node's reply tree: where replies may go by default."""
        return f"{self.base}/response/#"

    @property
    def cancel(self) -> str:
        """Where clients publish ``{"id": ...}`` to stop a generation."""
        return f"{self.base}/cancel"

    @property
    def client_cancels(self) -> str:
        """The filter of per-client cancel topics: a client cancels only its own requests."""
        return f"{self.base}/cancel/+"

    def client_cancel(self, client: str) -> str:
        """Where the client named ``client`` cancels its requests."""
        return f"{self.base}/cancel/{client}"

    # -- sessions (daemon/sessions) ---------------------------------------------------------------

    @property
    def session_resets(self) -> list[str]:
        """The filters of the reset topics: ``<base>/session/<id>/reset`` (the plain client's
        session) and ``<base>/session/<id>/reset/<client>`` (the ACL binds the last level)."""
        return [f"{self.base}/session/+/reset", f"{self.base}/session/+/reset/+"]

    def session_reset(self, session: str, client: str = "") -> str:
        """Where ``client`` forgets its session ``session``."""
        plain = f"{self.base}/session/{session}/reset"
        return f"{plain}/{client}" if client else plain

    def session_reset_of(self, topic: str) -> tuple[str, str] | None:
        """(session id, client) of a reset topic, or None if the topic is not one."""
        head = f"{self.base}/session/"
        if not topic.startswith(head):
            return None
        levels = topic[len(head) :].split("/")
        if len(levels) == 2 and levels[1] == "reset" and levels[0]:
            return levels[0], ""
        if len(levels) == 3 and levels[1] == "reset" and levels[0] and levels[2]:
            return levels[0], levels[2]
        return None

    @property
    def status(self) -> str:
        """Retained online/offline state with details; also the last will."""
        return f"{self.base}/status"

    @property
    def telemetry(self) -> str:
        """Periodic sensor and governor readings."""
        return f"{self.base}/telemetry"

    @property
    def sweep_command(self) -> str:
        """Where a press of Home Assistant's button asks for a new thread sweep (as SIGUSR1)."""
        return f"{self.base}/command/thread_sweep"

    @property
    def model_command(self) -> str:
        """Where an administrator loads, swaps or unloads the model (under command/: the
        shipped broker ACL lets only trusted users write there; docs/MODELS.md)."""
        return f"{self.base}/command/model"

    @property
    def ha_event(self) -> str:
        """The reply topic Home Assistant's event entity watches: an automation names it as
        reply_to. Under the reply tree of the user ``homeassistant`` (the shipped ACL's name for
        Home Assistant), the only part of it that user may read."""
        return f"{self.base}/response/{HA_USER}/event"

    def ha_object_id(self) -> str:
        """This node's object id in Home Assistant's discovery topics: the prefix (made safe
        for a topic level) and the node id, unique across edgellm installations on a broker."""
        return f"{_LEVEL_UNSAFE.sub('_', self.prefix)}_{self.node_id}"

    def ha_config(self, ha_prefix: str) -> str:
        """The retained device-based discovery message (Home Assistant 2024.11 and later)."""
        return f"{ha_prefix}/device/{self.ha_object_id()}/config"

    def response(self, request_id: str) -> str:
        """The default reply topic of a request that names no reply address."""
        return f"{self.base}/response/{request_id}"

    def response_for(self, user: str | None, request_id: str) -> str:
        """A client's own reply topic; under the shipped broker ACL a user may read only
        ``<base>/response/<user name>/#``."""
        if not user:
            return self.response(request_id)
        return f"{self.base}/response/{user}/{request_id}"


def _client_under(plain: str, topic: str) -> str | None:
    """'' for the plain topic itself, the last level of ``<plain>/<client>``, else None."""
    if topic == plain:
        return ""
    head = f"{plain}/"
    if topic.startswith(head) and "/" not in topic[len(head) :] and len(topic) > len(head):
        return topic[len(head) :]
    return None


def is_publishable(topic: str) -> bool:
    """Whether a client-supplied reply topic may be published to (no wildcards, not empty)."""
    return (
        bool(topic)
        and len(topic.encode("utf-8")) <= 65535
        and not _WILDCARDS.intersection(topic)
        and "\x00" not in topic
        and not topic.startswith("$")
    )
