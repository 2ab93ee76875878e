"""Two daemons with one node id on one broker: one clear error, no reconnect storm, never an
answer twice (daemon/frontends/mqtt_identity.py); its pure rules on their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.frontends.mqtt_identity import SESSION_TAKEN_OVER, Duplicates
from tests.helpers import Broker, Client, Daemon, poll

MINE, OTHER = "aaaa", "bbbb"


def status(state: str, instance: str | None) -> bytes:
    body = {"state": state, "node_id": "n"}
    return json.dumps(body if instance is None else {**body, "instance": instance}).encode()


def test_a_session_taken_over_is_a_duplicate_at_once():
    assert Duplicates.connection_lost(SESSION_TAKEN_OVER) is not None
    assert Duplicates.connection_lost(7) is None  # a plain lost connection


def test_a_foreign_status_before_this_process_own_came_back_is_a_previous_process():
    # A restart, or a power cut: the broker still holds the last process's status, and it
    # arrives (retained) before this process's own first status comes back.
    d = Duplicates(MINE)
    assert d.status_seen(status("online", OTHER)) is None
    assert d.status_seen(status("offline", OTHER)) is None
    assert d.status_seen(status("online", MINE)) is None


def test_a_foreign_status_after_this_process_own_is_a_second_live_process():
    d = Duplicates(MINE)
    d.status_seen(status("online", MINE))
    assert d.status_seen(status("online", MINE)) is None
    assert d.status_seen(b"not json") is None
    assert d.status_seen(status("online", None)) is None  # not an edgellm status
    # The other's last will, published by the broker when it took the session back, says it too.
    why = d.status_seen(status("offline", OTHER))
    assert why is not None and OTHER in why


def test_the_one_that_stepped_down_is_not_taken_for_a_third():
    d = Duplicates(MINE)
    d.status_seen(status("online", MINE))
    resigned = json.dumps({"state": "offline", "instance": OTHER, "resigned": True}).encode()
    assert d.status_seen(resigned) is None


def _exited_with_the_error(d: Daemon) -> bool:
    return not d.alive() and any(e.get("event") == "mqtt_duplicate_node" for e in d.log_events())


@pytest.mark.model
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_second_daemon_with_the_same_node_id_ends_the_fight_at_once(
    broker: Broker, model_path: Path, tmp_path: Path, protocol: str
):
    settings = {
        "mqtt": {"host": broker.host, "port": broker.port, "protocol": protocol},
        "governor": {"thread_sweep": False},
        "http": {"enabled": False},
        "wyoming": {"enabled": False},
    }
    first = Daemon(broker, tmp_path, node_id=f"dup{protocol[0]}", settings=settings).start()
    (tmp_path / "second").mkdir()  # its own log and config file: the names follow the node id
    second = Daemon(broker, tmp_path / "second", node_id=first.node_id, settings=settings)
    try:
        second.start(wait_online=False)
        loser = poll(
            lambda: next((d for d in (first, second) if _exited_with_the_error(d)), None),
            60,
            "one daemon to stop with mqtt_duplicate_node",
        )
        winner = second if loser is first else first
        assert loser.proc is not None and loser.proc.returncode == 4  # systemd leaves it stopped
        errors = [e for e in loser.log_events() if e.get("event") == "mqtt_duplicate_node"]
        assert len(errors) == 1 and first.node_id in errors[0]["error"]
        assert "node_id" in errors[0]["error"]  # the fix, named
        # The survivor serves, online, without a reconnect storm.
        assert winner.alive()
        assert winner.wait_status("online", 30)["state"] == "online"
        client = Client(broker)
        try:
            reply_to = f"{winner.prefix}/response/dup/d1"
            client.subscribe(reply_to)
            body = {"id": "d1", "prompt": "Hi", "max_tokens": 4, "reply_to": reply_to}
            client.publish(f"{winner.prefix}/request", json.dumps(body))
            replies = client.until_terminal(reply_to, 60)
            assert [r.body["type"] for r in replies if r.body["type"] != "delta"] == ["done"]
        finally:
            client.close()
        connects = [e for e in winner.log_events() if e.get("event") == "mqtt_connected"]
        assert len(connects) <= 3
    finally:
        for d in (first, second):
            if d.alive():
                d.stop()
