"""deploy/mosquitto/edgellm.conf and acl loaded by a real mosquitto: who may read and write what."""

from __future__ import annotations

import grp
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.frontends.topics import Topics
from tests.helpers import LOOPBACK, REPO, Broker, Daemon, free_port, wait_port

CONF = REPO / "deploy" / "mosquitto" / "edgellm.conf"
ACL = REPO / "deploy" / "mosquitto" / "acl"
LOCAL_CONF = REPO / "deploy" / "mosquitto" / "local.conf"
PASSWORDS = {
    "edgellm": "daemon-secret",
    "alice": "alice-secret",
    "bob": "bob-secret",
    "homeassistant": "ha-secret",
    "admin": "admin-secret",
}
# Not in the shipped ACL: a test user that may read everything, to show what the broker let
# through (a message the ACL drops reaches no one, so silence alone proves little).
OBSERVER = ("observer", "observer-secret")
QUIET_S = 0.5


def broker_conf(port: int, workdir: Path) -> str:
    """The shipped drop-in with only the listener and the two file paths changed for the test,
    after the persistence lines of Debian's own /etc/mosquitto/mosquitto.conf (which includes the
    drop-in): a drop-in that set persistence_location again would stop this broker, as it would
    stop Debian's."""
    text = CONF.read_text()
    replaced = {
        r"^listener 1883$": f"listener {port} {LOOPBACK}",
        r"^password_file .*$": f"password_file {workdir / 'passwd'}",
        r"^acl_file .*$": f"acl_file {workdir / 'acl'}",
    }
    for pattern, line in replaced.items():
        text, n = re.subn(pattern, line, text, flags=re.MULTILINE)
        assert n == 1, f"{CONF} has no single line matching {pattern}"
    return f"persistence true\npersistence_location {workdir / 'data'}/\n" + text


def writable_by_broker(path: Path) -> None:
    """mosquitto started as root writes its persistence file as user mosquitto."""
    if os.geteuid() == 0:
        shutil.chown(path, "mosquitto", "mosquitto")


def readable_by_broker(path: Path) -> None:
    """root:mosquitto 0640, as on a real broker: mosquitto started as root reads these files
    after it has dropped to its own user (docs/DEPLOY.md)."""
    path.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(path, 0, grp.getgrnam("mosquitto").gr_gid)


@pytest.fixture(scope="module")
def lan_broker() -> Iterator[int]:
    # Not under pytest's tmp_path: its 0700 parents would keep the mosquitto user out.
    with tempfile.TemporaryDirectory(prefix="edgellm-lanbroker-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        yield from _run_lan_broker(workdir)


def _run_lan_broker(workdir: Path) -> Generator[int, None, None]:
    passwd = workdir / "passwd"
    passwd.touch()
    for user, password in [*PASSWORDS.items(), OBSERVER]:
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    (workdir / "acl").write_text(ACL.read_text() + f"\nuser {OBSERVER[0]}\ntopic read #\n")
    readable_by_broker(passwd)
    readable_by_broker(workdir / "acl")
    (workdir / "data").mkdir(exist_ok=True)
    writable_by_broker(workdir / "data")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(broker_conf(port, workdir))
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen([exe, "-c", str(conf), "-v"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=5)
        yield port
    except TimeoutError:
        raise RuntimeError((workdir / "mosquitto.log").read_text()) from None
    finally:
        proc.terminate()
        proc.wait(5)
        log.close()


class User:
    """A paho v5 client logged in as one user, collecting every message it is sent."""

    def __init__(self, port: int, user: str | None, password: str | None = None):
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[Any] = queue.Queue()
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{user or 'anon'}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.on_connect = lambda _c, _u, _f, rc, _p: self.connack.put(rc)
        self.c.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.c.connect(LOOPBACK, port)
        self.c.loop_start()
        self.rc = self.connack.get(timeout=5)

    def subscribe(self, topic: str) -> None:
        done: queue.Queue[int] = queue.Queue()
        self.c.on_subscribe = lambda _c, _u, mid, _codes, _p: done.put(mid)
        _rc, mid = self.c.subscribe(topic, qos=1)
        assert done.get(timeout=5) == mid

    def publish(self, topic: str, payload: str, response_topic: str | None = None) -> None:
        props = None
        if response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
        self.c.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)

    def next(self, timeout: float) -> tuple[str, dict[str, Any]]:
        """The next message, as (topic, JSON body)."""
        msg = self.messages.get(timeout=timeout)
        return msg.topic, json.loads(msg.payload)

    def received(self, timeout: float = QUIET_S) -> list[tuple[str, str]]:
        """Everything that arrives within timeout (to show what did not)."""
        out = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                break
            out.append((msg.topic, msg.payload.decode()))
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def login(lan_broker: int) -> Iterator[Any]:
    users: list[User] = []

    def make(name: str) -> User:
        password = dict([*PASSWORDS.items(), OBSERVER])[name]
        u = User(lan_broker, name, password)
        assert not u.rc.is_failure, f"{name} refused: {u.rc}"
        users.append(u)
        return u

    yield make
    for u in users:
        u.close()


def test_anonymous_and_wrong_passwords_are_refused(lan_broker: int) -> None:
    anon = User(lan_broker, None)
    wrong = User(lan_broker, "alice", "guess")
    right = User(lan_broker, "alice", PASSWORDS["alice"])
    try:
        # mosquitto 2.0 answers both with "Not authorized" (135); later versions may say 134.
        assert anon.rc.is_failure and anon.rc.value in (134, 135)
        assert wrong.rc.is_failure and wrong.rc.value in (134, 135)
        assert not right.rc.is_failure
    finally:
        for u in (anon, wrong, right):
            u.close()


def test_daemon_gets_requests_and_its_replies_reach_the_asker(login: Any) -> None:
    daemon, alice = login("edgellm"), login("alice")
    daemon.subscribe("edgellm/+/request")
    daemon.subscribe("edgellm/+/request/+")
    daemon.subscribe("edgellm/+/cancel")
    daemon.subscribe("edgellm/+/cancel/+")
    reply_topic = "edgellm/kitchen/response/alice/q1"
    alice.subscribe("edgellm/kitchen/response/alice/#")

    alice.publish("edgellm/kitchen/request/alice", '{"id": "q1", "prompt": "hi"}', reply_topic)
    alice.publish("edgellm/kitchen/cancel", '{"id": "q1"}')  # not hers: refused
    alice.publish("edgellm/kitchen/cancel/bob", '{"id": "q1"}')  # not hers: refused
    alice.publish("edgellm/kitchen/cancel/alice", '{"id": "q1"}')
    got = daemon.received()
    assert [t for t, _ in got] == [
        "edgellm/kitchen/request/alice",
        "edgellm/kitchen/cancel/alice",
    ]

    daemon.publish(reply_topic, '{"type": "done", "id": "q1"}')
    assert alice.received() == [(reply_topic, '{"type": "done", "id": "q1"}')]


def test_a_user_asks_only_under_its_own_name(login: Any) -> None:
    """The broker binds the request topic's last level to the user name: the daemon's rate limits
    and allow-list then apply to who really asks."""
    alice, observer = login("alice"), login("observer")
    observer.subscribe("edgellm/#")

    alice.publish("edgellm/kitchen/request/alice", "mine")
    alice.publish("edgellm/kitchen/request/bob", "pretending to be bob")
    alice.publish("edgellm/kitchen/request", "nameless")  # only the open loopback broker has it
    alice.publish("edgellm/kitchen/request/alice/x", "a level too deep")

    assert observer.received() == [("edgellm/kitchen/request/alice", "mine")]


def test_a_client_cannot_read_another_clients_replies_or_prompts(login: Any) -> None:
    daemon, alice, bob, observer = login("edgellm"), login("alice"), login("bob"), login("observer")
    for topic in (
        "edgellm/#",
        "edgellm/kitchen/response/alice/#",
        "edgellm/+/request",
        "edgellm/+/request/+",
    ):
        bob.subscribe(topic)
    observer.subscribe("edgellm/#")
    alice.subscribe("edgellm/kitchen/response/alice/#")

    alice.publish("edgellm/kitchen/request/alice", "a private prompt")
    daemon.publish("edgellm/kitchen/response/alice/q2", "alice's reply")
    daemon.publish("edgellm/kitchen/response/q3", "a reply to no one in particular")

    assert bob.received() == []
    assert alice.received() == [("edgellm/kitchen/response/alice/q2", "alice's reply")]
    # The broker did deliver all three, just not to bob.
    assert [t for t, _ in observer.received()] == [
        "edgellm/kitchen/request/alice",
        "edgellm/kitchen/response/alice/q2",
        "edgellm/kitchen/response/q3",
    ]


def test_every_user_reads_telemetry_and_only_the_daemon_writes_it(login: Any) -> None:
    daemon, alice, bob, observer = login("edgellm"), login("alice"), login("bob"), login("observer")
    for u in (alice, bob, observer):
        u.subscribe("edgellm/+/telemetry")

    alice.publish("edgellm/kitchen/telemetry", '{"temp_c": 20}')
    daemon.publish("edgellm/kitchen/telemetry", '{"temp_c": 61.5}')

    sent = [("edgellm/kitchen/telemetry", '{"temp_c": 61.5}')]
    assert alice.received() == sent
    assert bob.received() == sent
    assert observer.received() == sent


def test_clients_cannot_fake_status_and_the_daemon_writes_only_replies(login: Any) -> None:
    daemon, alice, observer = login("edgellm"), login("alice"), login("observer")
    observer.subscribe("#")
    alice.subscribe("edgellm/+/status")

    alice.publish("edgellm/kitchen/status", '{"state": "offline"}')
    # The confused-deputy case: a request whose Response Topic is another device's command topic.
    daemon.publish("home/door/set", "OPEN")
    daemon.publish("zigbee2mqtt/front_door/set", '{"state": "UNLOCK"}')
    daemon.publish("edgellm/kitchen/status", '{"state": "online"}')

    assert observer.received() == [("edgellm/kitchen/status", '{"state": "online"}')]
    assert alice.received() == [("edgellm/kitchen/status", '{"state": "online"}')]


def test_only_the_daemon_writes_home_assistant_discovery(login: Any) -> None:
    daemon, alice, ha, observer = (
        login("edgellm"),
        login("alice"),
        login("homeassistant"),
        login("observer"),
    )
    observer.subscribe("homeassistant/#")
    ha.subscribe("homeassistant/#")
    daemon.subscribe("homeassistant/status")
    config = "homeassistant/sensor/edgellm_kitchen/temperature/config"

    alice.publish("homeassistant/sensor/fake/config", '{"name": "fake"}')
    alice.publish("homeassistant/status", "offline")
    daemon.publish(config, '{"name": "kitchen SoC"}')
    assert observer.received() == [(config, '{"name": "kitchen SoC"}')]
    assert ha.received() == [(config, '{"name": "kitchen SoC"}')]
    assert daemon.received() == []

    # Home Assistant's birth message: the daemon hears it and would announce itself again.
    ha.publish("homeassistant/status", "online")
    assert daemon.received() == [("homeassistant/status", "online")]


@pytest.mark.parametrize(
    ("trusted", "command", "payload"),
    [
        # Home Assistant's button "Measure threads again".
        ("homeassistant", "edgellm/kitchen/command/thread_sweep", "PRESS"),
        # The model command (docs/MODELS.md, Swapping models).
        ("admin", "edgellm/kitchen/command/model", "gemma3-270m"),
    ],
)
def test_only_trusted_users_send_commands(
    login: Any, trusted: str, command: str, payload: str
) -> None:
    daemon, alice, user = login("edgellm"), login("alice"), login(trusted)
    daemon.subscribe("edgellm/+/command/#")
    alice.publish(command, "qwen3-4b")
    user.publish(command, payload)
    assert daemon.received() == [(command, payload)]


def test_a_user_resets_only_its_own_sessions(login: Any) -> None:
    """Sessions are kept per user name: the reset topic's last level is bound like a cancel's."""
    daemon, alice = login("edgellm"), login("alice")
    for f in Topics("edgellm", "kitchen").session_resets:
        daemon.subscribe(f)
    alice.publish("edgellm/kitchen/session/s1/reset", "{}")  # the open broker's plain topic
    alice.publish("edgellm/kitchen/session/s1/reset/bob", "{}")  # not hers
    alice.publish("edgellm/kitchen/session/s1/reset/alice", "{}")
    assert daemon.received() == [("edgellm/kitchen/session/s1/reset/alice", "{}")]


def test_the_lan_broker_keeps_retained_status_across_a_restart() -> None:
    """persistence true in the drop-in, persistence_location from the main config."""
    with tempfile.TemporaryDirectory(prefix="edgellm-lanbroker-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        first = _run_lan_broker(workdir)
        port = next(first)
        daemon = User(port, "edgellm", PASSWORDS["edgellm"])
        daemon.c.publish("edgellm/kitchen/status", "online", qos=1, retain=True).wait_for_publish(5)
        daemon.close()
        first.close()  # SIGTERM: mosquitto saves its database as it exits
        assert (workdir / "data" / "mosquitto.db").is_file()

        second = _run_lan_broker(workdir)
        port = next(second)
        alice = User(port, "alice", PASSWORDS["alice"])
        try:
            alice.subscribe("edgellm/+/status")
            assert alice.received() == [("edgellm/kitchen/status", "online")]
        finally:
            alice.close()
            second.close()


def test_the_quickstart_broker_keeps_its_state_in_dot_mosquitto() -> None:
    """local.conf as deploy/quickstart.sh runs it: from the checkout's root, .mosquitto/ made."""
    with tempfile.TemporaryDirectory(prefix="edgellm-localbroker-") as tmp:
        _run_quickstart_broker_twice(Path(tmp))


def _run_quickstart_broker_twice(workdir: Path) -> None:
    text, n = re.subn(
        r"^listener 1883 127\.0\.0\.1$",
        f"listener {free_port()} {LOOPBACK}",
        LOCAL_CONF.read_text(),
        flags=re.MULTILINE,
    )
    assert n == 1
    port = int(text.split("listener ", 1)[1].split()[0])
    conf = workdir / "local.conf"
    conf.write_text(text)
    checkout = workdir / "checkout"
    (checkout / ".mosquitto").mkdir(parents=True)
    for d in (workdir, checkout):
        d.chmod(0o755)  # the mosquitto user must reach .mosquitto when started as root
    writable_by_broker(checkout / ".mosquitto")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

    def run() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([exe, "-c", str(conf)], cwd=checkout, stderr=subprocess.PIPE)
        wait_port(port, timeout=5)
        return proc

    proc = run()
    try:
        anon = User(port, None)
        anon.c.publish("edgellm/kitchen/status", "online", qos=1, retain=True).wait_for_publish(5)
        anon.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    assert (checkout / ".mosquitto" / "mosquitto.db").is_file(), err.decode()

    proc = run()
    try:
        anon = User(port, None)
        anon.subscribe("edgellm/+/status")
        assert anon.received() == [("edgellm/kitchen/status", "online")]
        anon.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=5)


@pytest.mark.model
def test_the_real_daemon_serves_through_the_acl(
    lan_broker: int,
    login: Any,
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon as user edgellm, its password from the environment, answering alice only: the
    name in policy.clients_allowed is the one the broker authenticated."""
    monkeypatch.setenv("EDGELLM_MQTT_PASSWORD", PASSWORDS["edgellm"])
    broker = Broker(lan_broker, tmp_path)  # already running: only its address is used
    d = Daemon(
        broker,
        tmp_path,
        settings={
            "mqtt": {"username": "edgellm"},
            "policy": {"clients_allowed": ["alice"]},
            # Not what this test is about, and on a busy machine the sweep's run at every core
            # count can hold the first request for half a minute.
            "governor": {"thread_sweep": False},
        },
    )
    alice, bob = login("alice"), login("bob")
    bob.subscribe("edgellm/#")
    alice.subscribe(f"{d.prefix}/status")
    alice.subscribe(f"{d.prefix}/response/alice/#")
    # Daemon.start() would wait for `online` as an anonymous client, which this broker refuses.
    d.start(wait_online=False)
    try:
        topic, status = alice.next(timeout=60)
        assert (topic, status["state"]) == (f"{d.prefix}/status", "online"), d.log()
        reply_topic = f"{d.prefix}/response/alice/r1"
        body = {"id": "r1", "prompt": "Say hi.", "max_tokens": 4, "temperature": 0}
        alice.publish(f"{d.prefix}/request/alice", json.dumps(body), reply_topic)
        topic, reply = alice.next(timeout=30)
        while topic != reply_topic:  # a status republished meanwhile
            topic, reply = alice.next(timeout=30)
        assert (reply["type"], reply["id"]) == ("done", "r1"), d.log()

        # bob is a real user of the broker but not on this node's allow-list.
        bob_reply = f"{d.prefix}/response/bob/r2"
        body = {"id": "r2", "prompt": "Say hi.", "max_tokens": 4}
        bob.publish(f"{d.prefix}/request/bob", json.dumps(body), bob_reply)
        seen = []
        topic, refusal = bob.next(timeout=30)
        while topic != bob_reply:
            seen.append(topic)
            topic, refusal = bob.next(timeout=30)
        assert (refusal["type"], refusal["code"]) == ("error", "policy"), d.log()
        # Nothing of alice's reached bob: only status, telemetry and his own refusal.
        assert set(seen) <= {f"{d.prefix}/status", f"{d.prefix}/telemetry"}
    finally:
        assert d.stop() == 0


def test_fleet_topics_through_the_acl(login: Any) -> None:
    """Fleet mode (docs/FLEET.md): the daemon's shared subscription gets a user's request to the
    group, it may hand the request back under the same name and reply in the group's tree; a
    user asks and cancels only under its own name and reads only its own replies there."""
    daemon, alice, bob = login("edgellm"), login("alice"), login("bob")
    daemon.subscribe("$share/house/edgellm/fleet/house/request")
    daemon.subscribe("$share/house/edgellm/fleet/house/request/+")
    daemon.subscribe("edgellm/fleet/house/cancel/+")
    alice.subscribe("edgellm/fleet/house/response/alice/#")
    bob.subscribe("edgellm/fleet/house/response/#")  # bob may read only his own
    alice.publish("edgellm/fleet/house/request/alice", '{"id": "q1", "prompt": "hi"}')
    alice.publish("edgellm/fleet/house/request/bob", '{"id": "q2", "prompt": "hi"}')  # refused
    alice.publish("edgellm/fleet/house/cancel/alice", '{"id": "q1"}')
    assert [t for t, _ in daemon.received()] == [
        "edgellm/fleet/house/request/alice",
        "edgellm/fleet/house/cancel/alice",
    ]
    # A hand-back: the daemon publishes the request to the group again, under alice's name.
    daemon.publish("edgellm/fleet/house/request/alice", '{"id": "q1", "prompt": "hi"}')
    assert [t for t, _ in daemon.received()] == ["edgellm/fleet/house/request/alice"]
    daemon.publish("edgellm/fleet/house/response/alice/q1", '{"type": "done", "id": "q1"}')
    assert alice.received() == [
        ("edgellm/fleet/house/response/alice/q1", '{"type": "done", "id": "q1"}')
    ]
    assert bob.received() == []
