"""Two live processes with one node id: seen, said once, and not fought over.

Both would connect with client id `edgellm-<node>`: the broker hands the session from one to
the other, each reconnects, and requests in between are answered twice or not at all. Every
status a process publishes (online, offline, and its last will) carries its random
`instance` (mqtt_messages.INSTANCE), and the node subscribes to its own status topic. Once the
broker has handed this process back a status of its own, a status of its node with another
instance means another process connected with this node id since: nothing else writes there
(a takeover makes the broker publish the other's last will, so even an `offline` says it).
Before that a foreign one says nothing: it is a previous process's, retained (a restart, a
power cut), and it arrives before this process's own first status comes back. The process
that finds it is not alone steps down with a last retained status marked `resigned`, which the
other does not take for a third process.
MQTT v5's DISCONNECT reason 142, *session taken over*, says it too, where the broker sends one
(mosquitto 2.0.11 closes the socket instead).

Pure: no paho, no clock.
"""

from __future__ import annotations

import json

SESSION_TAKEN_OVER = 142  # MQTT v5 DISCONNECT reason code


class Duplicates:
    """Watches this node's status topic and its disconnects; a reason when another live process
    serves the same node id."""

    def __init__(self, instance: str) -> None:
        self._instance = instance
        self._armed = False  # a status of this process's own has come back from the broker

    def status_seen(self, payload: bytes) -> str | None:
        try:
            body = json.loads(payload)
            other, state = body.get("instance"), body.get("state")
        except (ValueError, AttributeError):
            return None
        if other == self._instance:
            self._armed = True
            return None
        if not self._armed or not isinstance(other, str) or body.get("resigned"):
            return None
        return f"another process (instance {other}) published this node's status ({state})"

    @staticmethod
    def connection_lost(reason_code: int | None) -> str | None:
        if reason_code == SESSION_TAKEN_OVER:
            return "the broker gave this node's MQTT session to another client (session taken over)"
        return None


def advice(node_id: str, why: str) -> str:
    """The one error line: what happened, which id, and the fix."""
    return (
        f"node id {node_id!r} is already served on this broker: {why}. Two daemons must not "
        "share a node_id: give each its own (node_id in /etc/edgellm/config.yaml; the default "
        "is the host name, made unique on default names; `edgellm check-config` prints it), then "
        "start this one again. This one stops rather than fight over the session."
    )
