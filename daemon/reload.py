"""What a SIGHUP reload may change live, and what needs a restart: a pure comparison of configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.config import Config

# Keys that take effect without a restart, each named exactly (tests/test_reload.py proves each
# one changes what the daemon does). Everything else (broker, topics, node id, the model file and
# its load-time settings, monitor.*, governor.enabled and governor.thread_sweep, which are read
# once at start) is kept as it was and reported. A key added to the config is a restart key
# until it is listed here with its test.
LIVE = frozenset(
    {
        "generation.max_tokens",
        "generation.temperature",
        "generation.top_p",
        "generation.top_k",
        "generation.repeat_penalty",
        "generation.system",
        "generation.stream_interval_ms",
        "limits.max_payload_bytes",
        "limits.max_tokens",
        "limits.max_messages",
        "limits.max_stop",
        "limits.queue_size",
        "limits.request_timeout_s",
        "limits.shutdown_grace_s",
        "limits.dedupe_window_s",
        "logging.level",
        "logging.format",
        "logging.log_prompts",
        "governor.soft_temp_c",
        "governor.hard_temp_c",
        "governor.temp_band_c",
        "governor.hysteresis_c",
        "governor.hysteresis_s",
        "governor.min_threads",
        "governor.max_threads",
        "governor.ctx_min",
        "governor.ctx_max",
        "governor.ctx_hold_s",
        "governor.mem_margin_mb",
        "governor.critical_mb",
        "governor.telemetry_interval_s",
        "policy.clients_allowed",
        "policy.reply_topics",
        "policy.system_prompt",
        "policy.blocked_terms",
        "policy.rate_limit.requests_per_min",
        "policy.rate_limit.burst",
        "policy.rate_limit.tokens_per_min",
        "mqtt.reply_qos",
        "mqtt.delta_qos",
        "model.n_threads",
        "model.n_ctx",
    }
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
        if key in LIVE:
            _set(merged, key, new_flat[key])
            applied.append(key)
        else:
            restart.append(key)
    return ReloadPlan(Config.model_validate(merged), tuple(applied), tuple(restart))
