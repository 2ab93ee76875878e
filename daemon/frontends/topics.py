"""Every MQTT topic string is built here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass

_WILDCARDS = frozenset("+#")


@dataclass(frozen=True)
class Topics:
    """The topic scheme of one node: ``<prefix>/<node_id>/<leaf>``."""

    prefix: str
    node_id: str

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
        plain = f"{self.base}/{leaf}"
        if topic == plain:
            return ""
        head = f"{plain}/"
        if topic.startswith(head) and "/" not in topic[len(head) :] and len(topic) > len(head):
            return topic[len(head) :]
        return None

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

    @property
    def status(self) -> str:
        """Retained online/offline state with details; also the last will."""
        return f"{self.base}/status"

    @property
    def telemetry(self) -> str:
        """Periodic sensor and governor readings."""
        return f"{self.base}/telemetry"

    def response(self, request_id: str) -> str:
        """The default reply topic of a request that names no reply address."""
        return f"{self.base}/response/{request_id}"

    def response_for(self, user: str | None, request_id: str) -> str:
        """A client's own reply topic; under the shipped broker ACL a user may read only
        ``<base>/response/<user name>/#``."""
        if not user:
            return self.response(request_id)
        return f"{self.base}/response/{user}/{request_id}"


def is_publishable(topic: str) -> bool:
    """Whether a client-supplied reply topic may be published to (no wildcards, not empty)."""
    return (
        bool(topic)
        and len(topic.encode("utf-8")) <= 65535
        and not _WILDCARDS.intersection(topic)
        and "\x00" not in topic
        and not topic.startswith("$")
    )
