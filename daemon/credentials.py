"""Where the broker password comes from: the environment, systemd credentials, a file, the YAML."""

from __future__ import annotations

import os
from pathlib import Path

from daemon.config import ENV_CREDENTIALS, ENV_PASSWORD, ConfigError, MqttConfig


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


def _first_line(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError) as err:
        raise ConfigError(f"mqtt.password_file: cannot read a password from {path}") from err
