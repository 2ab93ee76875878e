"""The systemd notify protocol in pure Python: one datagram per message to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


class Notifier:
    """Tells the service manager about start-up, health, reloads and shutdown (sd_notify(3))."""

    def __init__(self, address: str | None = None, watchdog_interval_s: float | None = None):
        # A leading '@' names a socket in the abstract namespace (sd_notify does the same).
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self.enabled = bool(address)
        # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval_s = watchdog_interval_s
        self._warned = False
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """A Notifier for $NOTIFY_SOCKET; a no-op one when the daemon was not started by systemd."""
        address = environ.get(ENV_SOCKET) or None
        if address is not None and not address.startswith(("/", "@")):
            # vsock: and other transports of newer systemd versions are not spoken here.
            log.warning("sd_notify_unsupported_socket", address=address)
            address = None
        return cls(address, _watchdog_interval(environ))

    def ready(self, status: str) -> None:
        """Start-up (or a reload) is complete: the daemon serves requests."""
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, text: str) -> None:
        """A one-line description of what the daemon is doing, shown by `systemctl status`."""
        self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        """The keep-alive ping; send only while the daemon is really healthy."""
        self._send("WATCHDOG=1")

    def watchdog_trigger(self) -> None:
        """Ask for the watchdog action now (kill and restart), as if the pings had run out."""
        self._send("WATCHDOG=trigger")

    def reloading(self) -> None:
        """A reload began; READY=1 (ready()) must follow once it is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self, status: str) -> None:
        """Shutdown began."""
        self._send(f"STOPPING=1\nSTATUS={status}")

    def _send(self, message: str) -> None:
        if not self.enabled or self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as err:
            # Notification is advisory: a missing socket must never take the daemon down. Warn
            # once, not on every watchdog ping.
            with self._lock:
                warned, self._warned = self._warned, True
            if not warned:
                log.warning("sd_notify_failed", error=str(err), address=self._address.lstrip("\0"))


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of $WATCHDOG_USEC in seconds, or None when no watchdog is meant for this process."""
    try:
        usec = int(environ.get(ENV_WATCHDOG_USEC, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get(ENV_WATCHDOG_PID)
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def worker_alive(last_heartbeat: float, now: float, limit_s: float) -> bool:
    """Whether a worker whose last heartbeat was at last_heartbeat still counts as alive at now."""
    return now - last_heartbeat <= limit_s
