"""Who this node is: the default node id, unique on a LAN where every board has one name.

Every Raspberry Pi OS install is called `raspberrypi` and Jetson and Ubuntu images share their
own defaults: two such boards on one broker would take each other's MQTT session for ever. On a
distribution's default host name the default id gains a suffix derived from /etc/machine-id
(stable across reboots, distinct per install; hashed with this program's name, as systemd's
sd_id128_get_machine_app_specific does, so the id does not reveal the machine id itself).
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

# Host names that distribution images ship with: not a name anyone chose for this board.
DEFAULT_HOSTNAMES = frozenset(
    {
        "raspberrypi", "raspberry", "pi", "ubuntu", "debian", "dietpi", "armbian", "localhost",
        "jetson", "nvidia", "nvidia-desktop", "jetson-desktop", "tegra-ubuntu", "orin", "nano",
        "orangepi", "rockpi", "radxa", "rock", "odroid", "pine64", "libretech", "homeassistant",
    }
)  # fmt: skip
MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def _machine_id(paths: tuple[Path, ...]) -> str | None:
    for path in paths:
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if re.fullmatch(r"[0-9a-f]{32}", text):
            return text
    return None


def default_node_id(
    hostname: str | None = None, machine_id_paths: tuple[Path, ...] = MACHINE_ID_PATHS
) -> str:
    """The host name reduced to what is safe in a topic level; on a distribution's default
    name, with a 6-hex suffix from the machine id (`raspberrypi-3f9a1c`)."""
    host = socket.gethostname() if hostname is None else hostname
    name = re.sub(r"[^A-Za-z0-9_-]", "-", host.split(".")[0]).strip("-")[:57] or "node"
    if name.lower() not in DEFAULT_HOSTNAMES and name != "node":
        return name
    machine = _machine_id(machine_id_paths)
    if machine is None:
        return name
    return f"{name}-{hashlib.sha256(f'edgellm:{machine}'.encode()).hexdigest()[:6]}"
