"""Typed configuration: the only place where config.yaml and the environment are read."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, model_validator

from daemon.config_base import NODE_ID as _NODE_ID
from daemon.config_base import Section as _Section
from daemon.config_engine import GenerationConfig, ModelConfig
from daemon.config_frontends import (
    ENV_HTTP_KEY,
    FleetConfig,
    HomeAssistantConfig,
    HttpConfig,
    WyomingConfig,
)
from daemon.identity import default_node_id
from daemon.sessions.config import SessionsConfig

ENV_PASSWORD = "EDGELLM_MQTT_PASSWORD"
ENV_CONFIG = "EDGELLM_CONFIG"
# systemd's LoadCredential= puts secrets here; a file named mqtt_password is read from it.
ENV_CREDENTIALS = "CREDENTIALS_DIRECTORY"

_TOPIC_LEVEL_FORBIDDEN = re.compile(r"[+#\x00]")
# Sections defined beside this module, part of its interface.
__all__ = ["ENV_HTTP_KEY", "FleetConfig", "HomeAssistantConfig", "HttpConfig", "WyomingConfig"]
__all__ += ["GenerationConfig", "ModelConfig"]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


class TlsConfig(_Section):
    enabled: bool = Field(False, description="Connect to the broker over TLS.")
    ca_file: Path | None = Field(None, description="CA bundle; None uses the system store.")
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client private key (mutual TLS).")


class MqttConfig(_Section):
    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port.")
    protocol: Literal["5", "3.1.1"] = Field(
        "5", description="MQTT version the daemon speaks; 3.1.1 clients are served either way."
    )
    username: str | None = Field(None, description="Broker user name.")
    password: SecretStr | None = Field(
        None, description=f"Broker password; prefer ${ENV_PASSWORD} or password_file."
    )
    password_file: Path | None = Field(None, description="File whose first line is the password.")
    client_id: str | None = Field(None, description="MQTT client id; default edgellm-<node_id>.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval.")
    topic_prefix: str = Field("edgellm", min_length=1, description="First topic level(s).")
    reply_qos: Literal[0, 1, 2] = Field(1, description="QoS of terminal replies (done, error).")
    delta_qos: Literal[0, 1, 2] = Field(
        0,
        description="QoS of streamed delta messages (a request may ask for another); the done "
        "reply repeats the whole text, so a lost delta loses nothing.",
    )
    reply_expiry_s: int | None = Field(
        600,
        ge=1,
        le=86400,
        description="MQTT v5 Message Expiry of replies: a vanished client's stream does not "
        "pile up in the broker; None: never expire.",
    )
    tls: TlsConfig = TlsConfig()

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if _TOPIC_LEVEL_FORBIDDEN.search(self.topic_prefix) or self.topic_prefix.startswith("/"):
            raise ValueError("topic_prefix must not contain '+', '#' or start with '/'")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set either password or password_file, not both")
        return self


class LimitsConfig(_Section):
    """Bounds that keep one client from taking the device."""

    max_payload_bytes: int = Field(
        65536, ge=256, le=16 * 1024 * 1024, description="Largest request accepted."
    )
    max_tokens: int = Field(1024, ge=1, description="Upper bound on any request's max_tokens.")
    max_messages: int = Field(
        256,
        ge=1,
        description="Most chat messages in one request (Home Assistant's llama.cpp integration "
        "resends a whole evening's conversation, four messages per tool turn).",
    )
    max_stop: int = Field(8, ge=0, le=32, description="Most stop strings in one request.")
    queue_size: int = Field(
        8, ge=1, le=1024, description="Requests waiting beyond the running one."
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="Deadline from arrival to the end of generation."
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0, description="How long shutdown lets a running generation finish."
    )
    dedupe_window_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="A request id seen again within this window is not run again; its "
        "terminal reply is sent again (QoS 1 redelivery, client retries).",
    )


class RateLimitConfig(_Section):
    """Per-client token buckets; a client over either gets `rate_limited`."""

    requests_per_min: float | None = Field(
        60.0, gt=0, description="Sustained requests per minute per client; None: no limit."
    )
    burst: int = Field(10, ge=1, le=10000, description="Requests a client may send at once.")
    tokens_per_min: int | None = Field(
        20000, gt=0, description="Generated tokens per minute per client; None: no limit."
    )


class PolicyConfig(_Section):
    """What this node will do for whom: clients, reply topics, a fixed system prompt, terms."""

    clients_allowed: list[str] | None = Field(
        None,
        description="Client names (the level after .../request/) allowed to ask; None: all. "
        "The plain .../request topic is the client named '' (empty).",
    )
    reply_topics: list[str] | None = Field(
        None,
        description="MQTT topic filters replies may also go to, besides the node's own reply "
        "tree <prefix>/<node>/response/# (always allowed).",
    )
    system_prompt: str | None = Field(
        None, description="A fixed system prompt put before any a request brings; not replaceable."
    )
    blocked_terms: list[str] = Field(
        default_factory=list,
        description="Terms refused in prompts and cut from output (case-insensitive): "
        "the request gets a `policy` error.",
    )
    classifier: str | None = Field(
        None,
        description="A safety classifier, 'module:factory' returning a Classifier; None: off.",
    )
    rate_limit: RateLimitConfig = RateLimitConfig()


class SimConfig(_Section):
    """The simulated sensor source: a first-order thermal model driven by the daemon's load."""

    ambient_c: float = Field(25.0, ge=-20, le=60, description="Ambient temperature.")
    idle_rise_c: float = Field(
        10.0, ge=0, le=60, description="How far above ambient the idle SoC settles."
    )
    heat_per_thread_c_s: float = Field(
        0.22, ge=0, le=10, description="Heating rate of one busy thread, in degrees C per second."
    )
    cool_per_s: float = Field(
        0.016, gt=0, le=1, description="Newton cooling constant: 1/time constant, per second."
    )
    throttle_c: float | None = Field(
        85.0, ge=30, le=120, description="Report firmware throttling above this; None: never."
    )
    mem_total_mb: int | None = Field(
        None, ge=1, description="Fixed total memory; None reads the real system."
    )
    mem_available_mb: int | None = Field(
        None, ge=0, description="Fixed available memory; None reads the real system."
    )


class MonitorConfig(_Section):
    """Where sensor readings come from and how often they are taken."""

    source: Literal["system", "replay", "sim"] = Field(
        "system", description="system: the real sensors; replay: a trace file; sim: a model."
    )
    interval_s: float = Field(1.0, ge=0.1, le=60, description="Seconds between readings.")
    sysfs_root: Path = Field(
        Path("/"), description="Root of /sys, /proc and /etc (tests point it at a fake tree)."
    )
    trace: Path | None = Field(None, description="CSV or JSON-lines trace for source: replay.")
    trace_loop: bool = Field(False, description="Start the trace again when it ends.")
    sim: SimConfig = SimConfig()

    @model_validator(mode="after")
    def _check(self) -> MonitorConfig:
        if self.source == "replay" and self.trace is None:
            raise ValueError("source: replay needs a trace file")
        return self


class GovernorConfig(_Section):
    """The policy that steers threads, context length and admission from the sensors."""

    enabled: bool = Field(True, description="Adapt threads and context to the machine.")
    soft_temp_c: float | None = Field(
        None, ge=30, le=120, description="Step threads down near this; None: the board's."
    )
    hard_temp_c: float | None = Field(
        None, ge=30, le=120, description="Drop to min_threads at this; None: the board's."
    )
    temp_band_c: float = Field(
        2.0, ge=0, le=20, description="Act this far below soft_temp_c, before the firmware does."
    )
    hysteresis_c: float = Field(
        5.0, ge=0, le=30, description="Step back up only this far below the step-down point."
    )
    hysteresis_s: float = Field(
        10.0, ge=0, le=600, description="Least time between thread steps (hard limit: none)."
    )
    min_threads: int = Field(1, ge=1, le=256, description="Never fewer generation threads.")
    max_threads: int | None = Field(
        None, ge=1, le=256, description="Never more threads; None: the board's (the cores)."
    )
    ctx_min: int = Field(512, ge=128, le=131072, description="Smallest context it shrinks to.")
    ctx_max: int | None = Field(
        None, ge=128, le=131072, description="Largest context it grows to; None: model.n_ctx."
    )
    ctx_hold_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Least time between context growths; short again within it: ctx_min.",
    )
    mem_margin_mb: int | None = Field(
        None, ge=0, le=65536, description="Memory kept free beyond the KV cache; None: board's."
    )
    critical_mb: int = Field(
        100, ge=0, le=65536, description="Refuse new requests below this much usable memory."
    )
    thread_sweep: bool = Field(True, description="Measure tokens/s per thread count at start.")
    telemetry_interval_s: float = Field(
        10.0, ge=1, le=3600, description="Seconds between telemetry messages."
    )

    @model_validator(mode="after")
    def _check(self) -> GovernorConfig:
        soft, hard = self.soft_temp_c, self.hard_temp_c
        if soft is not None and hard is not None and hard <= soft:
            raise ValueError("hard_temp_c must be above soft_temp_c")
        if self.max_threads is not None and self.max_threads < self.min_threads:
            raise ValueError("max_threads must not be below min_threads")
        if self.ctx_max is not None and self.ctx_max < self.ctx_min:
            raise ValueError("ctx_max must not be below ctx_min")
        return self


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON otherwise (journald)."
    )
    log_prompts: bool = Field(
        False, description="Log prompt and reply text. Off by default: prompts are private."
    )


class Config(_Section):
    node_id: Annotated[str, Field(pattern=_NODE_ID.pattern)] = Field(
        default_factory=default_node_id, description="This device's topic level."
    )
    mqtt: MqttConfig = MqttConfig()
    model: ModelConfig = ModelConfig()
    generation: GenerationConfig = GenerationConfig()
    limits: LimitsConfig = LimitsConfig()
    policy: PolicyConfig = PolicyConfig()
    monitor: MonitorConfig = MonitorConfig()
    governor: GovernorConfig = GovernorConfig()
    fleet: FleetConfig = FleetConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    http: HttpConfig = HttpConfig()
    wyoming: WyomingConfig = WyomingConfig()
    sessions: SessionsConfig = SessionsConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.model.kv_type != "f16" and not self.model.flash_attn:
            raise ValueError("model.kv_type q8_0 needs model.flash_attn: true (llama.cpp)")
        if self.generation.max_tokens > self.limits.max_tokens:
            raise ValueError("generation.max_tokens must not exceed limits.max_tokens")
        if self.fleet.group is not None and self.node_id == "fleet":
            raise ValueError("node_id 'fleet' is taken by the fleet topics <prefix>/fleet/...")
        return self


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse(data: dict[str, Any] | None, source: str = "config") -> Config:
    """Validate a config mapping; raise ConfigError naming each bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read config.yaml (or the embedded defaults when path is None), apply overrides."""
    if path is None and os.environ.get(ENV_CONFIG):
        path = Path(os.environ[ENV_CONFIG])
    data: dict[str, Any] = {}
    source = "embedded defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"cannot read {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"invalid configuration in {path}: the top level must be a mapping")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return parse(data, source)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
