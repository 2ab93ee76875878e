"""Where secrets come from: the broker password and the HTTP key (environment, credentials,
file, YAML)."""

from __future__ import annotations

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
