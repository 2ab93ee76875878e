"""The HTTP API end to end: the real daemon and model, the unmodified ollama and openai clients."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.helpers import LOOPBACK, Broker, Client, Daemon, free_port, poll

pytestmark = pytest.mark.model
MODEL = "smollm2-135m"
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def node(
    broker: Broker, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    port = free_port()
    d = Daemon(broker, tmp_path_factory.mktemp("http"), settings={"http": {"port": port}})
    d.start()
    yield d
    d.stop()


def base(d: Daemon) -> str:
    return f"http://{LOOPBACK}:{d.settings['http']['port']}"


def test_ollama_client_lists_and_shows_the_model(node: Daemon):
    c = ollama.Client(host=base(node))
    names = [m.model for m in c.list().models]
    assert names[0] == f"{MODEL}:latest"
    running = c.ps().models
    assert running[0].model == f"{MODEL}:latest"
    assert running[0].context_length and running[0].context_length >= 128
    assert running[0].size and running[0].size > 1_000_000
    shown = c.show(MODEL)
    assert shown.details is not None and shown.details.format == "gguf"
    assert shown.modelinfo and "general.architecture" in shown.modelinfo


def test_every_response_names_the_node(node: Daemon):
    for path in ("/api/version", "/nowhere"):
        response = httpx.get(f"{base(node)}{path}")
        assert response.headers["X-Edgellm-Node"] == node.node_id


def test_ollama_client_streams_a_chat(node: Daemon):
    c = ollama.Client(host=base(node))
    parts = list(
        c.chat(
            model=f"{MODEL}:latest",
            messages=[{"role": "user", "content": "Say hello."}],
            stream=True,
            keep_alive="5m",
            options={"num_predict": 12, "num_ctx": 8192, "temperature": 0.2},
        )
    )
    assert len(parts) >= 2, "a stream of several lines"
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    text = "".join(p.message.content or "" for p in parts)
    assert text.strip()
    assert parts[-1].done_reason in ("stop", "length")
    assert 1 <= (parts[-1].eval_count or 0) <= 12


def test_ollama_generate_and_pull(node: Daemon):
    c = ollama.Client(host=base(node))
    out = c.generate(model=MODEL, prompt="The sky is", options={"num_predict": 5})
    assert out.done and out.response and (out.eval_count or 0) <= 5
    assert c.pull(MODEL).status == "success"
    statuses = [p.status for p in c.pull(MODEL, stream=True)]
    assert statuses[-1] == "success"


def test_openai_client_streams_a_chat(node: Daemon):
    c = openai.OpenAI(base_url=f"{base(node)}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in c.models.list().data] == [MODEL]
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Say hello."}],
            stream=True,
            max_tokens=12,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip()
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage is not None and 1 <= usage.completion_tokens <= 12
    # The finishing chunk carries llama-server's `timings` whether or not usage was asked for.
    timings = next(ch for ch in chunks if ch.choices and ch.choices[0].finish_reason).model_extra
    assert timings is not None
    got = timings["timings"]
    assert got["prompt_n"] + got["cache_n"] == usage.prompt_tokens
    assert got["predicted_n"] == usage.completion_tokens
    whole = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert whole.choices[0].message.content and whole.usage.completion_tokens <= 5


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/api/chat", b"{not json", 400, "not valid JSON"),
        (
            "/api/chat",
            b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "not found",
        ),
        ("/api/chat", json.dumps({"model": MODEL, "messages": "hi"}).encode(), 400, "messages"),
        (
            "/api/chat",
            b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": '
            b'"x"}], "format": 5}',
            400,
            "format",
        ),
        ("/api/generate", b'{"model": "smollm2-135m", "prompt": 5}', 400, "prompt"),
        (
            "/api/chat",
            b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": '
            b'"x"}], "options": {"temperature": "hot"}}',
            400,
            "temperature",
        ),
        ("/api/nothing", b"{}", 404, "no endpoint"),
    ],
)
def test_bad_ollama_requests_get_clear_errors(node: Daemon, path, body, status, fragment):
    r = httpx.post(base(node) + path, content=body, timeout=30)
    assert r.status_code == status
    assert fragment in r.json()["error"]
    assert httpx.get(base(node) + "/api/tags").status_code == 200


def test_bad_openai_requests_get_openai_errors(node: Daemon):
    url = base(node) + "/v1/chat/completions"
    r = httpx.post(url, json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(url, json={"model": MODEL})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_oversized_body_is_refused(node: Daemon):
    r = httpx.post(base(node) + "/api/chat", content=b"x" * (4 * 1024 * 1024 + 1), timeout=30)
    assert r.status_code == 413
    assert "limit" in r.json()["error"]
    assert ollama.Client(host=base(node)).ps().models


def test_prompt_over_the_context_is_a_400(node: Daemon):
    huge = "word " * 60_000  # ~60k tokens: more than any context the governor allows here
    r = httpx.post(
        base(node) + "/api/chat",
        json={"model": MODEL, "messages": [{"role": "user", "content": huge}], "stream": True},
        timeout=120,
    )
    assert r.status_code == 400
    assert "context" in r.json()["error"]


def test_disconnect_mid_stream_cancels(node: Daemon):
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
            "options": {"num_predict": 400, "temperature": 0.9},
        }
    )
    conn = http.client.HTTPConnection(LOOPBACK, node.settings["http"]["port"], timeout=60)
    conn.request("POST", "/api/chat", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.fp.readline()  # the chunk's size
    first = json.loads(resp.fp.readline())
    assert first["done"] is False
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    event = poll(
        lambda: next(
            (
                e
                for e in node.log_events()
                if e.get("event") == "request" and e.get("outcome") == "cancelled"
            ),
            None,
        ),
        60,
        "a cancelled request in the log",
    )
    assert event["client"] == f"http:{LOOPBACK}"
    assert event["usage"]["completion_tokens"] < 400


def test_metadata_answers_while_generating(node: Daemon):
    """/api/ps never waits for the engine: it answers within a fraction of a generation."""
    c = httpx.Client(base_url=base(node), timeout=120)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count to fifty."}],
        "stream": True,
        "options": {"num_predict": 60},
    }
    with c.stream("POST", "/api/chat", json=body) as stream:
        lines = stream.iter_lines()
        next(lines)  # generating now
        t0 = time.monotonic()
        assert httpx.get(base(node) + "/api/ps").status_code == 200
        assert time.monotonic() - t0 < 1.0
        rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["done"] is True


@pytest.fixture(scope="module")
def keyed(
    broker: Broker, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    d = Daemon(
        broker,
        tmp_path_factory.mktemp("keyed"),
        settings={"http": {"port": free_port(), "api_key": KEY}},
    )
    d.start()
    yield d
    d.stop()


def test_bearer_key_is_enforced(keyed: Daemon):
    url = base(keyed)
    r = httpx.get(url + "/api/tags")
    assert r.status_code == 401
    assert (
        httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).json()["error"][
            "type"
        ]
        == "authentication_error"
    )
    c = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in c.models.list().data] == [MODEL]
    o = ollama.Client(host=url, headers={"Authorization": f"Bearer {KEY}"})
    assert o.list().models


def test_port_taken_leaves_mqtt_serving(
    broker: Broker, model_path: Path, tmp_path: Path, client: Client
):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = Daemon(broker, tmp_path, settings={"http": {"port": port}}).start()
        try:
            assert any(e.get("event") == "http_unavailable" for e in d.log_events())
            topic = f"{d.prefix}/response/t1"
            client.subscribe(topic)
            client.publish(
                f"{d.prefix}/request", json.dumps({"id": "t1", "prompt": "Hi", "max_tokens": 3})
            )
            assert client.until_terminal(topic)[-1].body["type"] == "done"
        finally:
            d.stop()


def test_the_python_example_runs_against_a_node(node: Daemon):
    example = Path(__file__).parent.parent / "docs" / "examples" / "python-openai.py"
    out = subprocess.run(
        [sys.executable, str(example)],
        env={**os.environ, "EDGELLM_URL": base(node)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    listed, *answer = out.splitlines()
    assert listed == str([MODEL]) and "".join(answer).strip()


def test_rate_limited_and_refused_clients_get_429_and_403(
    broker: Broker, model_path: Path, tmp_path: Path
):
    limited = {"rate_limit": {"requests_per_min": 1.0, "burst": 1, "tokens_per_min": None}}
    d = Daemon(
        broker,
        tmp_path,
        settings={"http": {"port": free_port()}, "policy": limited},
    ).start()
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
        body["options"] = {"num_predict": 2}
        assert httpx.post(base(d) + "/api/chat", json=body, timeout=60).status_code == 200
        again = httpx.post(base(d) + "/api/chat", json=body, timeout=60)
        assert again.status_code == 429 and "error" in again.json()
        assert float(again.headers["Retry-After"]) > 0
    finally:
        d.stop()
    far = Daemon(
        broker,
        tmp_path,
        settings={"http": {"port": free_port(), "clients_allowed": ["10.0.0.0/8"]}},
    ).start()
    try:
        refused = httpx.get(base(far) + "/api/tags", timeout=10)
        assert refused.status_code == 403 and "error" in refused.json()
    finally:
        far.stop()
