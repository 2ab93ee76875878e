"""Swapping models without a restart, end to end: a real daemon with both PyPI models installed,
the real `ollama` client, MQTT on a real broker (daemon/slot.py, docs/MODELS.md)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from daemon import models
from daemon.catalog import CATALOG
from tests.conftest import REQUIRE_MODEL
from tests.helpers import LOOPBACK, Broker, Client, Daemon, poll
from tests.test_http_pull import with_default_model

CHAT, BASE = "smollm2-135m", "gemma3-270m"  # a chat model and a base (completion) model
BROKEN = "smollm2-360m"  # a hub entry: its file here is the right size and not a model
WAIT_S = 120.0


@pytest.fixture(scope="module")
def models_dir(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        base = models.locate(BASE, None)
    except models.ModelError as err:
        if REQUIRE_MODEL:
            raise
        pytest.skip(f"{BASE} not installed ({err}); run tests/run.sh")
    directory = with_default_model(tmp_path_factory.mktemp("models"), model_path)
    with_default_model(directory, base)
    return directory


@pytest.fixture(scope="module")
def node(
    broker: Broker, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    settings = {"model": {"dir": str(models_dir)}, "governor": {"thread_sweep": False}}
    d = Daemon(broker, tmp_path_factory.mktemp("swap"), settings=settings).start()
    yield d
    d.stop()


@pytest.fixture
def on_chat(node: Daemon) -> Daemon:
    """The node with the chat model loaded, whatever the test before left."""
    api(node).generate(model=CHAT, keep_alive=-1)
    return node


def api(d: Daemon) -> ollama.Client:
    return ollama.Client(host=f"http://{LOOPBACK}:{d.http_port}", timeout=WAIT_S)


def loaded(d: Daemon) -> list[str]:
    return [m.model or "" for m in api(d).ps().models]


def status_where(d: Daemon, ok: Any, timeout: float = WAIT_S) -> dict[str, Any]:
    """The first retained-or-live status message that satisfies ok."""
    client = Client(d.broker)
    try:
        client.subscribe(f"{d.prefix}/status")
        while True:
            body = client.next(f"{d.prefix}/status", timeout).body
            if ok(body):
                return body
    finally:
        client.close()


def send(client: Client, d: Daemon, body: dict[str, Any]) -> str:
    """Publish one MQTT request with a fresh reply topic; the topic to read its replies on."""
    topic = f"{d.prefix}/response/test/{uuid.uuid4().hex}"
    client.subscribe(topic)
    client.publish(f"{d.prefix}/request", json.dumps(body), response_topic=topic)
    return topic


def events(d: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") == name]


def test_a_request_naming_an_installed_model_swaps_it_in(on_chat: Daemon) -> None:
    c = api(on_chat)
    tags = [m.model or "" for m in c.list().models]
    assert tags == [f"{CHAT}:latest"], "a base model is installed, not offered to chat clients"
    reply = c.generate(
        model=f"{BASE}:latest", prompt="The capital of France is", options={"num_predict": 4}
    )
    assert reply.done and (reply.eval_count or 0) >= 1
    assert loaded(on_chat) == [f"{BASE}:latest"]
    body = status_where(on_chat, lambda b: b.get("model") == BASE)
    assert body["state"] == "online" and body["chat"] is False
    assert body["model_swap"]["to"] == BASE and body["model_swap"]["error"] is None
    assert [m.model for m in c.list().models] == [f"{BASE}:latest", f"{CHAT}:latest"]
    # And back, by the chat API: the chat model answers again.
    chat = c.chat(
        model=CHAT, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4}
    )
    assert chat.done and loaded(on_chat) == [f"{CHAT}:latest"]
    swaps = events(on_chat, "model_swap_done")
    assert [e["new"] for e in swaps[-2:]] == [BASE, CHAT]
    assert all(e["seconds"] > 0 for e in swaps)


def test_running_work_finishes_and_newcomers_get_503_while_a_swap_loads(
    on_chat: Daemon, client: Client
) -> None:
    c = api(on_chat)
    opts = {"num_predict": 48, "temperature": 0}
    stream = c.chat(
        model=CHAT,
        messages=[{"role": "user", "content": "Tell me a story."}],
        options=opts,
        stream=True,
    )
    first = next(stream)
    assert first.message.content is not None
    # Queued behind the stream: it runs before the swap, on the model it was sent to.
    queued = send(client, on_chat, {"prompt": "Hi", "max_tokens": 8})
    swapped: dict[str, Any] = {}
    swapper = threading.Thread(
        target=lambda: swapped.update(
            r=c.generate(model=BASE, prompt="Once", options={"num_predict": 2})
        )
    )
    begun = len(events(on_chat, "model_swap_begin"))
    swapper.start()
    poll(lambda: len(events(on_chat, "model_swap_begin")) > begun, 30, "the swap to begin")
    late = httpx.post(
        f"http://{LOOPBACK}:{on_chat.http_port}/api/chat",
        json={"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "stream": False},
        timeout=WAIT_S,
    )
    assert late.status_code == 503 and int(late.headers["Retry-After"]) >= 1
    assert f"model {BASE} is loading" in late.json()["error"]
    parts = [first, *stream]
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    mqtt = client.until_terminal(queued, WAIT_S)[-1].body
    assert mqtt["type"] == "done", mqtt
    swapper.join(WAIT_S)
    assert swapped["r"].done and loaded(on_chat) == [f"{BASE}:latest"]


def test_keep_alive_0_unloads_and_the_next_request_loads_it_again(on_chat: Daemon) -> None:
    c = api(on_chat)
    gone = c.generate(model=CHAT, keep_alive=0)
    assert gone.done_reason == "unload" and loaded(on_chat) == []
    body = status_where(on_chat, lambda b: b.get("model_state") == "unloaded")
    assert "model" not in body and body["state"] == "online"
    chat = c.chat(
        model=CHAT, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4}
    )
    assert chat.done and loaded(on_chat) == [f"{CHAT}:latest"]


def test_the_chat_api_unloads_and_loads_with_no_messages(on_chat: Daemon) -> None:
    url = f"http://{LOOPBACK}:{on_chat.http_port}/api/chat"
    gone = httpx.post(url, json={"model": CHAT, "messages": [], "keep_alive": 0}, timeout=WAIT_S)
    assert gone.status_code == 200 and gone.json()["done_reason"] == "unload"
    assert loaded(on_chat) == []
    back = httpx.post(url, json={"model": f"{CHAT}:latest"}, timeout=WAIT_S).json()
    assert back["done_reason"] == "load" and back["message"] == {"role": "assistant", "content": ""}
    assert loaded(on_chat) == [f"{CHAT}:latest"]


def test_mqtt_unloaded_node_answers_busy_then_serves(on_chat: Daemon, client: Client) -> None:
    api(on_chat).generate(model=CHAT, keep_alive=0)
    first = client.until_terminal(send(client, on_chat, {"prompt": "Hi", "max_tokens": 4}))
    refused = first[-1].body
    assert refused["code"] == "busy" and refused["retry_after_s"] > 0
    assert f"model {CHAT} is loading" in refused["message"]
    poll(lambda: loaded(on_chat) == [f"{CHAT}:latest"], WAIT_S, "the model to load again")
    again = client.until_terminal(send(client, on_chat, {"prompt": "Hi", "max_tokens": 4}))
    assert again[-1].body["type"] == "done"


def test_the_mqtt_command_swaps_and_reports_what_it_refuses(
    on_chat: Daemon, client: Client
) -> None:
    command = f"{on_chat.prefix}/command/model"
    client.publish(command, BASE.encode())
    status_where(on_chat, lambda b: b.get("model") == BASE and b.get("model_state") == "loaded")
    client.publish(command, json.dumps({"load": "qwen3-0.6b"}).encode())
    body = status_where(on_chat, lambda b: (b.get("model_swap") or {}).get("to") == "qwen3-0.6b")
    assert "not installed" in body["model_swap"]["error"] and body["model"] == BASE
    client.publish(command, b"{not json")
    client.publish(command, json.dumps({"unload": True}).encode())
    status_where(on_chat, lambda b: b.get("model_state") == "unloaded")
    assert on_chat.alive() and events(on_chat, "model_command_ignored")


def test_a_model_that_fails_to_load_leaves_the_old_one_serving(
    on_chat: Daemon, models_dir: Path
) -> None:
    entry = CATALOG[BROKEN]
    path = models_dir / entry.filename
    with path.open("wb") as f:
        f.write(models.GGUF_MAGIC + b"\x03\x00\x00\x00" + b"\xff" * 64)
        f.truncate(entry.size)  # sparse: the catalog's size, and garbage
    st = path.stat()
    seal = {"sha256": "0" * 64, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    path.with_name(path.name + models.SIDECAR_SUFFIX).write_text(json.dumps(seal))
    try:
        with pytest.raises(ollama.ResponseError, match=f"cannot load model '{BROKEN}'") as err:
            api(on_chat).generate(model=BROKEN, prompt="Hi")
        assert err.value.status_code == 500
        assert loaded(on_chat) == [f"{CHAT}:latest"]
        chat = api(on_chat).chat(
            model=CHAT, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4}
        )
        assert chat.done and on_chat.alive()
    finally:
        path.unlink()
        path.with_name(path.name + models.SIDECAR_SUFFIX).unlink()
