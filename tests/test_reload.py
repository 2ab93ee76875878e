"""SIGHUP reload planning: live keys change, the rest waits for a restart and is reported."""

from __future__ import annotations

from daemon import config
from daemon.reload import plan_reload


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
