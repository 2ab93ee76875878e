"""SIGHUP reload planning: live keys change, the rest waits for a restart and is reported."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from daemon import config, logsetup
from daemon.engine import ModelInfo
from daemon.frontends.mqtt_door import MqttFrontDoor
from daemon.governor.loop import Steering
from daemon.intake import Intake
from daemon.reload import LIVE, plan_reload
from daemon.sdnotify import Notifier
from daemon.service import Service


def test_live_keys_apply_and_others_are_reported():
    old = config.parse({"node_id": "a", "mqtt": {"port": 1883}})
    new = config.parse(
        {
            "node_id": "b",
            "mqtt": {"port": 1884, "reply_qos": 0},
            "generation": {"temperature": 0.2},
            "limits": {"queue_size": 2},
            "logging": {"log_prompts": True},
            "model": {"n_ctx": 1024},
        }
    )
    plan = plan_reload(old, new)
    assert set(plan.applied) == {
        "mqtt.reply_qos",
        "generation.temperature",
        "limits.queue_size",
        "logging.log_prompts",
        "model.n_ctx",
    }
    assert set(plan.needs_restart) == {"node_id", "mqtt.port"}
    cfg = plan.config
    assert (cfg.node_id, cfg.mqtt.port) == ("a", 1883)  # kept until a restart
    assert (cfg.mqtt.reply_qos, cfg.generation.temperature, cfg.limits.queue_size) == (0, 0.2, 2)
    assert cfg.logging.log_prompts is True and cfg.model.n_ctx == 1024


def test_unchanged_config_is_a_no_op():
    cfg = config.parse({"node_id": "a"})
    plan = plan_reload(cfg, config.parse({"node_id": "a"}))
    assert plan.applied == () and plan.needs_restart == ()
    assert plan.config == cfg


def test_policy_keys_apply_live_but_the_classifier_and_repacking_need_a_restart():
    old = config.parse({"node_id": "a"})
    new = config.parse(
        {
            "node_id": "a",
            "policy": {
                "blocked_terms": ["x"],
                "clients_allowed": ["alice"],
                "rate_limit": {"burst": 3},
                "classifier": "mod:factory",
            },
            "model": {"cpu_repack": "off"},
        }
    )
    plan = plan_reload(old, new)
    assert set(plan.applied) == {
        "policy.blocked_terms",
        "policy.clients_allowed",
        "policy.rate_limit.burst",
    }
    assert set(plan.needs_restart) == {"policy.classifier", "model.cpu_repack"}


# -- each live key takes effect through Service.reload ------------------------------------------


class StubEngine:
    """What Service.reload tells the engine, recorded (the real one is proved in
    tests/test_engine_limits.py: a thread count and a context change take effect natively)."""

    threads, n_ctx, sweep, busy, queue_depth = 2, 2048, None, False, 0

    def __init__(self) -> None:
        self.settings: tuple[Any, ...] = ()
        self.limits: dict[str, int | None] = {}

    def update_settings(self, generation: Any, limits: Any, policy: Any = None) -> None:
        self.settings = (generation, limits, policy)

    def set_limits(self, threads: int | None = None, n_ctx: int | None = None) -> None:
        self.limits = {"threads": threads, "n_ctx": n_ctx}


class StubTransport:
    def set_status(self, payload: bytes) -> None:
        self.status = payload


class NoSensors:
    def read(self) -> Any:
        raise AssertionError("not read in these tests")


# key -> (a new value, where the running daemon reads it after the reload)
EFFECTS: dict[str, tuple[Any, Any]] = {
    **{
        f"generation.{k}": (v, lambda s, k=k: getattr(s.engine.settings[0], k))
        for k, v in {
            "max_tokens": 77,
            "temperature": 0.1,
            "top_p": 0.5,
            "top_k": 7,
            "repeat_penalty": 1.3,
            "system": "Be brief.",
            "stream_interval_ms": 0,
        }.items()
    },
    "limits.max_tokens": (512, lambda s: s.engine.settings[1].max_tokens),
    "limits.queue_size": (3, lambda s: s.engine.settings[1].queue_size),
    **{
        f"limits.{k}": (v, lambda s, k=k: getattr(s.door.cfg.limits, k))
        for k, v in {
            "max_payload_bytes": 4096,
            "max_messages": 5,
            "max_stop": 2,
            "request_timeout_s": 30.0,
        }.items()
    },
    "limits.shutdown_grace_s": (1.5, lambda s: s.cfg.limits.shutdown_grace_s),
    "limits.dedupe_window_s": (9.0, lambda s: s.intake.recent.window_s),
    "logging.level": ("debug", lambda s: s.logsetup_calls[-1][0]),
    "logging.format": ("json", lambda s: s.logsetup_calls[-1][1]),
    "logging.log_prompts": (True, lambda s: s.intake.cfg.logging.log_prompts),
    **{
        f"governor.{k}": (v, lambda s, k=k: getattr(s.steering.gcfg, k))
        for k, v in {
            "soft_temp_c": 61.0,
            "hard_temp_c": 71.0,
            "temp_band_c": 3.0,
            "hysteresis_c": 4.0,
            "hysteresis_s": 20.0,
            "max_threads": 3,
            "ctx_min": 256,
            "ctx_max": 1024,
            "ctx_hold_s": 5.0,
            "mem_margin_mb": 300,
            "critical_mb": 50,
            "telemetry_interval_s": 2.0,
        }.items()
    },
    "governor.min_threads": (
        2,
        lambda s: (s.steering.gcfg.min_threads, s.steering.facts.min_threads)[1],
    ),
    "policy.clients_allowed": (["alice"], lambda s: s.intake.cfg.policy.clients_allowed),
    "policy.reply_topics": (["home/+/say"], lambda s: s.door._reply_filters()[1:]),
    "policy.system_prompt": ("Rule.", lambda s: s.engine.settings[2].system_prompt),
    "policy.blocked_terms": (["xyzzy"], lambda s: s.engine.settings[2].blocked_terms),
    **{
        f"policy.rate_limit.{k}": (v, lambda s, k=k: getattr(s.intake.limiter._cfg, k))
        for k, v in {"requests_per_min": 6.0, "burst": 2, "tokens_per_min": 500}.items()
    },
    "mqtt.reply_qos": (0, lambda s: s.door.cfg.mqtt.reply_qos),
    "mqtt.delta_qos": (1, lambda s: s.door.cfg.mqtt.delta_qos),
    "model.n_threads": (1, lambda s: s.engine.limits["threads"]),
    "model.n_ctx": (1024, lambda s: s.engine.limits["n_ctx"]),
}


def test_every_live_key_has_an_effect_test():
    assert set(EFFECTS) == set(LIVE)


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return out


def _service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"node_id": "a"}))
    cfg = config.load(path, {})
    service: Any = Service(cfg, config_path=path, notifier=Notifier(None))
    service.logsetup_calls = []
    monkeypatch.setattr(logsetup, "configure", lambda *a, **k: service.logsetup_calls.append(a))
    info = ModelInfo("m", "/m", 1, 2048, 8192, 2, 2, True, {})
    service.slot = SimpleNamespace(engine=StubEngine(), cfg=cfg, info=info, details=dict)
    service.transport = StubTransport()
    service.intake = Intake(cfg, service.engine, Counter(), lambda: True)
    service.door = MqttFrontDoor(cfg, service.topics, service.intake, Counter())
    service.steering = Steering(cfg, service.engine, info, NoSensors(), lambda body: None)
    return service, path


@pytest.mark.parametrize("key", sorted(EFFECTS))
def test_a_live_key_takes_effect_on_reload(key: str, tmp_path: Path, monkeypatch):
    service, path = _service(tmp_path, monkeypatch)
    value, read = EFFECTS[key]
    body = {"node_id": "a", **_nested(key, value)}
    path.write_text(yaml.safe_dump(body))
    service.reload()
    assert read(service) == value


@pytest.mark.parametrize("key", ["governor.enabled", "governor.thread_sweep"])
def test_governor_switches_read_at_start_need_a_restart(key: str):
    old = config.parse({"node_id": "a"})
    new = config.parse({"node_id": "a", **_nested(key, False)})
    plan = plan_reload(old, new)
    assert plan.applied == () and plan.needs_restart == (key,)
