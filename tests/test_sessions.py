"""Sessions: the node keeps a conversation's turns (bounded, reset, expired, kept on disk if
asked), fits them into the context, and reuses the KV cache so a follow-up pays only for its
new tokens, even after another conversation used the model in between."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from daemon.config import GenerationConfig, GovernorConfig, PolicyConfig
from daemon.engine import history, llama_compat
from daemon.engine.kvstates import KvStates
from daemon.engine.prompt import Prompter
from daemon.governor.policy import MIB, kv_state_budget
from daemon.requests import ChatMessage, Request, ToolCall
from daemon.sessions.config import SessionsConfig
from daemon.sessions.persist import SqliteSessions
from daemon.sessions.store import SessionKey, SessionStore, drop_oldest
from tests.helpers import Broker, Client, Daemon, make_request, poll

U, A = "user", "assistant"
KEY = SessionKey("alice", "kitchen")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def msgs(*pairs: tuple[str, str]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(r, c) for r, c in pairs)


# -- the store: pure bounds ----------------------------------------------------------------------


def test_a_session_keeps_its_turns_in_order_and_only_its_clients():
    store = SessionStore(SessionsConfig())
    store.add(KEY, msgs((U, "hi")), "hello")
    store.add(KEY, msgs((U, "and tomorrow?")), "rain")
    assert store.turns(KEY) == msgs((U, "hi"), (A, "hello"), (U, "and tomorrow?"), (A, "rain"))
    # Another client naming the same id has a session of its own (keys are per client).
    assert store.turns(SessionKey("bob", "kitchen")) == ()


def test_the_oldest_turns_go_first_and_a_history_starts_with_a_user_turn():
    store = SessionStore(SessionsConfig(max_turns=4))
    for i in range(3):
        store.add(KEY, msgs((U, f"q{i}")), f"a{i}")
    assert store.turns(KEY) == msgs((U, "q1"), (A, "a1"), (U, "q2"), (A, "a2"))
    assert drop_oldest(msgs((U, "q"), (A, "a"), (U, "r")), 1) == msgs((U, "r"))
    # What the engine dropped to fit the context is dropped from the store too.
    store.add(KEY, msgs((U, "q3")), "a3", dropped=2)
    assert store.turns(KEY) == msgs((U, "q2"), (A, "a2"), (U, "q3"), (A, "a3"))


def test_least_recently_used_sessions_go_when_there_are_too_many():
    clock = Clock()
    store = SessionStore(SessionsConfig(max_sessions=2), clock=clock)
    for name in ("a", "b", "c"):
        clock.now += 1
        store.add(SessionKey("", name), msgs((U, "x")), "y")
    assert len(store) == 2 and store.turns(SessionKey("", "a")) == ()


def test_idle_sessions_expire_and_a_reset_forgets():
    clock = Clock()
    store = SessionStore(SessionsConfig(idle_s=60), clock=clock)
    store.add(KEY, msgs((U, "x")), "y")
    store.add(SessionKey("bob", "s"), msgs((U, "x")), "y")
    clock.now += 30
    assert store.reset(SessionKey("bob", "s")) and not store.reset(SessionKey("bob", "s"))
    assert store.turns(KEY)
    clock.now += 61
    assert store.expire() == [KEY] and store.turns(KEY) == ()


def test_sqlite_keeps_sessions_across_a_restart_in_a_private_file(tmp_path: Path):
    path = tmp_path / "state" / "sessions.db"
    clock = Clock()
    store = SessionStore(SessionsConfig(), SqliteSessions(path), clock)
    store.add(KEY, msgs((U, "hi")), "hello")
    call = ToolCall("c1", "light", {"room": "kitchen"})
    store.add(KEY, msgs((U, "light?")), ChatMessage("assistant", "", (call,)))
    store.add(KEY, (ChatMessage("tool", "done", tool_call_id="c1"),), "It is on.")
    store.add(SessionKey("", "gone"), msgs((U, "x")), "y")
    store.reset(SessionKey("", "gone"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # conversations are nobody else's
    again = SessionStore(SessionsConfig(), SqliteSessions(path), clock)
    assert again.turns(KEY) == store.turns(KEY)  # tool calls and their results too
    assert again.turns(KEY)[3].tool_calls == (call,) and again.turns(KEY)[4].tool_call_id == "c1"
    assert len(again) == 1
    # Expiry holds across the restart: the clock is the wall clock, not the process's.
    clock.now += 2 * 3600
    assert SessionStore(SessionsConfig(), SqliteSessions(path), clock).turns(KEY) == ()
    assert SqliteSessions(path).load() == {}


def test_the_governor_lowers_the_kv_state_budget_when_memory_is_short():
    cfg = GovernorConfig(mem_margin_mb=100)
    ceiling = 64 * MIB
    assert kv_state_budget(None, 0, cfg, ceiling) == ceiling  # unknown: the configured budget
    assert kv_state_budget(4096 * MIB, 0, cfg, ceiling) == ceiling
    # 260 MiB free, 40 held: half of (300 - 200).
    assert kv_state_budget(260 * MIB, 40 * MIB, cfg, ceiling) == 50 * MIB
    assert kv_state_budget(150 * MIB, 0, cfg, ceiling) == 0


# -- fitting and KV reuse on the real model ------------------------------------------------------


@pytest.fixture(scope="module")
def llm(model_path: Path) -> Any:
    llm = llama_compat.load_llama(
        str(model_path), repack=False, n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False
    )
    yield llm
    llm.close()


def prompter(llm: Any, system: str | None = None) -> Prompter:
    template = llm.metadata.get("tokenizer.chat_template")
    return Prompter(
        llm, "smollm2", GenerationConfig(), PolicyConfig(system_prompt=system), template
    )


def request(prompt: str, session: str = "s", client: str = "alice") -> Request:
    return make_request(prompt=prompt, session=session, client=client)


@pytest.mark.model
def test_the_oldest_turns_are_dropped_to_fit_and_the_system_prompt_never(llm: Any):
    p = prompter(llm, system="NODE-POLICY: be brief.")
    store = SessionStore(SessionsConfig())
    long = "the weather in the mountains is changing quickly today " * 8
    for i in range(6):
        store.add(SessionKey("alice", "s"), msgs((U, f"{i}: {long}")), f"{i}: {long}")
    fitted = history.fit(request("and now?"), store, p, n_ctx=512, max_new=128)
    assert fitted.dropped > 0 and fitted.history % 2 == 0 and fitted.history > 0
    assert len(fitted.tokens) <= 512 - 128
    text = llm.detokenize(fitted.tokens).decode()
    assert "NODE-POLICY" in text and "and now?" in text
    assert "0: the weather" not in text  # the oldest went first
    assert f"{5}: the weather" in text  # the newest stayed


@pytest.mark.model
def test_a_saved_state_comes_back_for_its_session(llm: Any):
    kv = KvStates(64 * MIB)
    talk = llm.tokenize(b"<|im_start|>user\nTell me about the sea and its waves.<|im_end|>\n")
    llm.reset()
    assert kv.prepare(llm, "a", talk) == 0
    llm.eval(talk)
    other = llm.tokenize(b"Something else entirely, about mountains and snow and rocks. " * 3)
    assert kv.prepare(llm, "b", other) == 0  # a's context is saved before b overwrites it
    assert len(kv) == 1 and kv.nbytes > 0
    llm.reset()
    llm.eval(other)
    follow = talk + llm.tokenize(b"<|im_start|>user\nMore?", add_bos=False)
    assert kv.prepare(llm, "a", follow) == len(talk)
    assert list(llama_compat.cached_tokens(llm)) == talk
    assert len(kv) == 1  # now b's is saved, a's is live
    kv.forget("b")
    kv.prepare(llm, "a", follow)
    assert len(kv) == 0 and kv.nbytes == 0


@pytest.mark.model
def test_states_beyond_the_budget_are_not_kept(llm: Any):
    kv = KvStates(1024)  # smaller than any state
    talk = llm.tokenize(b"<|im_start|>user\nTell me about the sea and its waves.<|im_end|>\n")
    llm.reset()
    kv.prepare(llm, "a", talk)
    llm.eval(talk)
    kv.prepare(llm, "b", talk[:3])
    assert len(kv) == 0


# -- end to end over MQTT ------------------------------------------------------------------------


def ask(client: Client, daemon: Daemon, body: dict[str, Any], user: str = "") -> dict[str, Any]:
    topic = f"{daemon.prefix}/response/{user or 'test'}/{uuid.uuid4().hex}"
    client.subscribe(topic)
    where = f"{daemon.prefix}/request" + (f"/{user}" if user else "")
    client.publish(where, json.dumps({"max_tokens": 24, **body}), response_topic=topic)
    return client.until_terminal(topic, 120)[-1].body


@pytest.mark.model
def test_a_follow_up_reuses_the_history_and_a_reset_forgets_it(client: Client, daemon: Daemon):
    sid = uuid.uuid4().hex[:8]
    first = ask(client, daemon, {"prompt": "Name a colour.", "session": sid})
    assert first["type"] == "done", first
    assert first["session"]["messages"] == 2
    second = ask(client, daemon, {"prompt": "And another one?", "session": sid})
    assert second["session"]["messages"] == 4
    # The history was in the prompt, and came from the KV cache, not evaluated again.
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"] + 5
    assert second["session"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    # Another conversation in between: the session's state is saved and put back.
    other = ask(client, daemon, {"prompt": "Count to three.", "session": f"{sid}x"})
    assert other["session"]["messages"] == 2
    third = ask(client, daemon, {"prompt": "One more?", "session": sid})
    assert third["session"]["messages"] == 6
    assert third["session"]["cached_tokens"] >= second["usage"]["prompt_tokens"]
    # Another client's session of the same id is its own.
    assert ask(client, daemon, {"prompt": "Hi.", "session": sid}, user="bob")["session"] == {
        "id": sid,
        "messages": 2,
        "dropped": 0,
        "cached_tokens": pytest.approx(0, abs=64),
    }
    client.publish(f"{daemon.prefix}/session/{sid}/reset", "{}")
    fresh = ask(client, daemon, {"prompt": "Name a colour.", "session": sid})
    assert fresh["session"]["messages"] == 2
    assert fresh["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]


@pytest.mark.model
def test_bad_session_requests_get_clear_errors(client: Client, daemon: Daemon):
    bad = ask(client, daemon, {"prompt": "x", "session": "no/slashes"})
    assert bad["type"] == "error" and bad["code"] == "bad_request" and "session" in bad["message"]
    only_system = ask(
        client, daemon, {"messages": [{"role": "system", "content": "x"}], "session": "s1"}
    )
    assert only_system["code"] == "bad_request" and "new turn" in only_system["message"]
    assert ask(client, daemon, {"prompt": "still serving?"})["type"] == "done"


@pytest.mark.model
def test_a_restart_with_sqlite_keeps_every_sessions_turns(
    broker: Broker, model_path: Path, tmp_path: Path
):
    db = tmp_path / "sessions.db"
    settings = {"sessions": {"persist": str(db)}, "governor": {"thread_sweep": False}}
    node = Daemon(broker, tmp_path, settings=settings).start()
    client = Client(broker)
    try:
        for sid in ("one", "two"):
            assert ask(client, node, {"prompt": "Hello.", "session": sid})["type"] == "done"
        assert ask(client, node, {"prompt": "Again.", "session": "one"})["session"]["messages"] == 4
        assert node.stop() == 0
        node.start()
        after = ask(client, node, {"prompt": "And now?", "session": "one"})
        assert after["session"]["messages"] == 6
        assert ask(client, node, {"prompt": "x", "session": "two"})["session"]["messages"] == 4
    finally:
        client.close()
        node.stop()


# -- the other front doors -----------------------------------------------------------------------


@pytest.mark.model
def test_an_openai_client_names_its_session_in_a_header(daemon: Daemon):
    import openai

    sid = uuid.uuid4().hex[:8]
    url = f"http://127.0.0.1:{daemon.http_port}/v1"
    c = openai.OpenAI(
        base_url=url, api_key="unused", max_retries=0, default_headers={"X-Edgellm-Session": sid}
    )
    turns = []
    for text in ("Name a fruit.", "And a vegetable?"):
        turns.append(
            c.chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": text}], max_tokens=16
            )
        )
    # Only the new turn was sent; the node put the first exchange before it.
    assert turns[1].usage.prompt_tokens > turns[0].usage.prompt_tokens + 5
    with pytest.raises(openai.BadRequestError, match="X-Edgellm-Session"):
        c.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"X-Edgellm-Session": "no/slash"},
        )


def test_a_wyoming_conversation_id_is_the_session():
    from daemon.config import Config
    from daemon.frontends.wyoming_events import session_of

    cfg = Config()
    assert session_of({"conversation_id": "01HS6SP2XD1E5HEHVDZE8R2WMR"}, cfg) == (
        "01HS6SP2XD1E5HEHVDZE8R2WMR"
    )
    hashed = session_of({"conversation_id": "a/b c"}, cfg)
    assert (
        hashed is not None
        and len(hashed) == 32
        and hashed == session_of({"conversation_id": "a/b c"}, cfg)
    )
    assert session_of(None, cfg) is None and session_of({"conversation_id": 5}, cfg) is None
    off = Config.model_validate({"sessions": {"enabled": False}})
    assert session_of({"conversation_id": "x"}, off) is None


@pytest.mark.model
def test_a_wyoming_follow_up_has_the_turns_before_it(daemon: Daemon):
    import asyncio

    from wyoming.asr import Transcript
    from wyoming.client import AsyncTcpClient

    cid = uuid.uuid4().hex

    async def say(text: str) -> None:
        async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
            await client.write_event(Transcript(text, context={"conversation_id": cid}).event())
            while True:
                event = await asyncio.wait_for(client.read_event(), 120)
                assert event is not None
                if event.type in ("handled", "not-handled"):
                    assert event.type == "handled", event
                    return

    asyncio.run(say("What is the capital of France?"))
    asyncio.run(say("And of Spain?"))

    def logged() -> list[int]:  # the log line follows the answer: wait for it
        events = daemon.log_events()
        return [e["session"]["messages"] for e in events if e.get("session", {}).get("id") == cid]

    assert poll(lambda: logged() if len(logged()) == 2 else None, 10, "both turns logged") == [2, 4]


def test_the_governor_loop_applies_the_kv_state_budget_each_tick():
    from daemon.config import Config
    from daemon.engine import ModelInfo
    from daemon.engine.history import SessionMemory
    from daemon.governor.loop import Steering
    from daemon.governor.snapshot import Snapshot

    class Engine:
        threads, n_ctx, sweep, busy, queue_depth = 2, 2048, None, False, 0
        memory = SessionMemory(None, KvStates(64 * MIB))

        def rates(self) -> Any:
            from daemon.engine.admission import Rates

            return Rates(None, None)

        def set_limits(self, threads: int | None = None, n_ctx: int | None = None) -> None:
            pass

    class Short:
        available = 4096 * MIB

        def read(self) -> Snapshot:
            return Snapshot(t=0.0, mem_total=8192 * MIB, mem_available=self.available)

    cfg = Config.model_validate({"governor": {"mem_margin_mb": 100}})
    engine, sensors = Engine(), Short()
    info = ModelInfo("m", "/m", 1, 2048, 8192, 2, 2, True, {})
    steering = Steering(cfg, engine, info, sensors, lambda body: None)  # type: ignore[arg-type]
    steering.tick()
    assert engine.memory.kv.budget_bytes == 256 * MIB  # plenty of memory: the configured budget
    sensors.available = 260 * MIB
    steering.tick()
    assert engine.memory.kv.budget_bytes == 30 * MIB  # half of (260 - 2 x 100)
