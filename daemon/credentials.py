"""Where secrets come from: the broker password and the HTTP key (environment, credentials,
file, YAML)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from daemon.config import (
    ENV_CREDENTIALS,
    ENV_HTTP_KEY,
    ENV_PASSWORD,
    ConfigError,
    HttpConfig,
    MqttConfig,
)


def mqtt_password(cfg: MqttConfig) -> str | None:
    """The broker password from, in order: the environment, systemd credentials, file, YAML."""
    if os.environ.get(ENV_PASSWORD):
        return os.environ[ENV_PASSWORD]
    cred_dir = os.environ.get(ENV_CREDENTIALS)
    if cred_dir and (Path(cred_dir) / "mqtt_password").is_file():
        return _first_line(Path(cred_dir) / "mqtt_password")
    if cfg.password_file is not None:
        return _first_line(cfg.password_file)
    return cfg.password.get_secret_value() if cfg.password else None


def _first_line(path: Path, key: str = "mqtt.password_file") -> str:
    try:
        return path.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError) as err:
        raise ConfigError(f"{key}: cannot read a secret from {path}") from err


def http_api_key(cfg: HttpConfig) -> str | None:
    """The HTTP bearer key from, in order: the environment, systemd credentials, file, YAML."""
    if os.environ.get(ENV_HTTP_KEY):
        return os.environ[ENV_HTTP_KEY]
    cred_dir = os.environ.get(ENV_CREDENTIALS)
    if cred_dir and (Path(cred_dir) / "http_api_key").is_file():
        return _first_line(Path(cred_dir) / "http_api_key", "http.api_key_file")
    if cfg.api_key_file is not None:
        return _first_line(cfg.api_key_file, "http.api_key_file")
    return cfg.api_key.get_secret_value() if cfg.api_key else None


def _loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, assume the network


def check_http_exposure(cfg: HttpConfig) -> None:
    """Refuse an HTTP API open to the network with nothing to say who may ask (ConfigError
    naming both fixes and the opt-in); loopback, a key, an allow-list or the opt-in pass."""
    if not cfg.enabled or _loopback(cfg.bind) or cfg.allow_unauthenticated:
        return
    if cfg.clients_allowed is not None or http_api_key(cfg) is not None:
        return
    raise ConfigError(
        f"http.bind: {cfg.bind} serves the network with no key and no allow-list: set "
        f"http.api_key (or ${ENV_HTTP_KEY}, or the http_api_key credential) and/or "
        "http.clients_allowed: [<your LAN>/24], or bind 127.0.0.1; to serve anyone who can reach "
        "the port, set http.allow_unauthenticated: true"
    )
