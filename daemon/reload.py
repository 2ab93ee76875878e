"""What a SIGHUP reload may change live, and what needs a restart: a pure comparison of configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.config import Config

# Keys that take effect without a restart. Everything else (broker, topics, node id, the model
# file and its load-time settings) is kept as it was and reported.
LIVE = (
    "generation.",
    "limits.",
    "logging.",
    "governor.",
    "policy.clients_allowed",
    "policy.reply_topics",
    "policy.system_prompt",
    "policy.blocked_terms",
    "policy.rate_limit.",
    "mqtt.reply_qos",
    "model.n_threads",
    "model.n_ctx",
)


@dataclass(frozen=True)
class ReloadPlan:
    """The config to run with from now on, and what changed."""

    config: Config
    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data[key]
    data[leaf] = value


def plan_reload(current: Config, new: Config) -> ReloadPlan:
    """Take the live keys from new, keep the rest of current; say which is which."""
    old_flat = _flatten(current.model_dump(mode="python"))
    new_flat = _flatten(new.model_dump(mode="python"))
    merged = current.model_dump(mode="python")
    applied, restart = [], []
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key) == new_flat.get(key):
            continue
        if key.startswith(LIVE):
            _set(merged, key, new_flat[key])
            applied.append(key)
        else:
            restart.append(key)
    return ReloadPlan(Config.model_validate(merged), tuple(applied), tuple(restart))
