"""Config: the shipped file is valid, bad keys are named, secrets come from outside the YAML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daemon import config, credentials
from daemon.config import ConfigError
from tests.helpers import REPO


def test_shipped_config_equals_the_embedded_defaults():
    shipped = config.load(REPO / "config.yaml")
    embedded = config.load(None)
    assert shipped.model_dump(exclude={"node_id"}) == embedded.model_dump(exclude={"node_id"})


def test_shipped_config_explains_every_key():
    text = (REPO / "config.yaml").read_text()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped:
            key, _, value = stripped.partition(":")
            if value.strip():  # a leaf: it must carry a comment
                assert "#" in value, f"config.yaml: {key} has no comment"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"mqtt": {"port": 70000}}, "mqtt.port: Input should be less than or equal to 65535"),
        ({"mqtt": {"prot": 1}}, "mqtt.prot: unknown key"),
        ({"modle": {}}, "modle: unknown key"),
        ({"model": {"n_ctx": 16}}, "model.n_ctx"),
        ({"node_id": "a/b"}, "node_id"),
        ({"mqtt": {"topic_prefix": "a/#"}}, "topic_prefix must not contain"),
        ({"mqtt": {"password": "x", "password_file": "/p"}}, "either password or password_file"),
        ({"generation": {"max_tokens": 5000}}, "must not exceed limits.max_tokens"),
        ({"logging": {"level": "loud"}}, "logging.level"),
    ],
)
def test_errors_name_the_key(data, fragment):
    with pytest.raises(ConfigError) as exc:
        config.parse(data, "test.yaml")
    assert fragment in str(exc.value)
    assert "test.yaml" in str(exc.value)


def test_yaml_syntax_and_shape_errors(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        config.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")


def test_overrides_apply_on_top_of_the_file(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"mqtt": {"host": "broker.lan", "port": 1884}}))
    cfg = config.load(path, {"mqtt.port": 2000, "node_id": "kitchen"})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.node_id) == ("broker.lan", 2000, "kitchen")


def test_password_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file\n")
    monkeypatch.delenv(config.ENV_PASSWORD, raising=False)
    monkeypatch.delenv(config.ENV_CREDENTIALS, raising=False)
    assert credentials.mqtt_password(config.parse({"mqtt": {"password": "yaml"}}).mqtt) == "yaml"
    cfg = config.parse({"mqtt": {"password_file": str(pw_file)}}).mqtt
    assert credentials.mqtt_password(cfg) == "from-file"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-credential")
    monkeypatch.setenv(config.ENV_CREDENTIALS, str(creds))
    assert credentials.mqtt_password(cfg) == "from-credential"
    monkeypatch.setenv(config.ENV_PASSWORD, "from-env")
    assert credentials.mqtt_password(cfg) == "from-env"


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_password_is_never_printed(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"mqtt": {"username": "u", "password": "hunter2"}}))
    assert "hunter2" not in repr(config.load(path))
    out = check_config(path)
    assert out.returncode == 0
    assert "hunter2" not in out.stdout
    assert "valid" in out.stdout


def test_check_config_fails_readably(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  port: nope\n")
    out = check_config(path)
    assert out.returncode == 2
    assert "mqtt.port" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("http", "refused"),
    [
        ({"bind": "0.0.0.0"}, True),
        ({"bind": "192.168.1.20"}, True),
        ({"bind": "kitchen.local"}, True),  # a host name: assume the network
        ({"bind": "127.0.0.1"}, False),
        ({"bind": "::1"}, False),
        ({"bind": "0.0.0.0", "api_key": "k"}, False),
        ({"bind": "0.0.0.0", "clients_allowed": ["192.168.1.0/24"]}, False),
        ({"bind": "0.0.0.0", "allow_unauthenticated": True}, False),
        ({"bind": "0.0.0.0", "enabled": False}, False),
    ],
)
def test_serving_the_lan_takes_a_key_an_allow_list_or_an_opt_in(http, refused, monkeypatch):
    monkeypatch.delenv(config.ENV_HTTP_KEY, raising=False)
    monkeypatch.delenv(config.ENV_CREDENTIALS, raising=False)
    cfg = config.parse({"http": http})
    if not refused:
        credentials.check_http_exposure(cfg.http)
        return
    with pytest.raises(config.ConfigError) as err:
        credentials.check_http_exposure(cfg.http)
    for fix in ("http.api_key", "http.clients_allowed", "http.allow_unauthenticated"):
        assert fix in str(err.value)
    monkeypatch.setenv(config.ENV_HTTP_KEY, "from-env")  # a key from the environment counts
    credentials.check_http_exposure(cfg.http)


def test_check_config_refuses_an_open_lan_bind(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(config.ENV_HTTP_KEY, raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"http": {"bind": "0.0.0.0"}}))
    out = check_config(path)
    assert out.returncode == 2 and "http.clients_allowed" in out.stderr
