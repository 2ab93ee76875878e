"""End to end: a real mosquitto, the real daemon process, the real SmolLM2 model."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.helpers import Client, Daemon

pytestmark = pytest.mark.model

# temperature 0 makes SmolLM2's answers repeatable, so assertions on text are stable.
GREEDY = {"temperature": 0, "seed": 1}


def ask(
    client: Client,
    daemon: Daemon,
    body: dict | str | bytes,
    *,
    v5: bool = True,
    timeout: float = 120,
) -> list:
    """Send one request with a fresh reply topic; return every reply up to the terminal one."""
    topic = f"{daemon.prefix}/response/test/{uuid.uuid4().hex}"
    client.subscribe(topic)
    payload = json.dumps(body) if isinstance(body, dict) else body
    if v5:
        client.publish(
            f"{daemon.prefix}/request",
            payload,
            response_topic=topic,
            correlation=b"corr-" + topic.encode()[-6:],
        )
    else:
        assert isinstance(body, dict)
        client.publish(f"{daemon.prefix}/request", json.dumps({**body, "reply_to": topic}))
    return client.until_terminal(topic, timeout)


def test_status_is_retained_online_with_details(daemon: Daemon):
    status = daemon.wait_status("online", timeout=5)
    deadline = time.monotonic() + 30
    while "thread_sweep" not in status:  # republished once the start-up sweep is done
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
        status = daemon.wait_status("online", timeout=5)
    assert status["model"] == "smollm2-135m"
    assert status["n_ctx"] == 2048
    assert status["threads"] >= 1
    # The thread sweep ran at start and its figures are published; the pick is one of them.
    sweep = status["thread_sweep"]
    assert str(status["threads"]) in sweep and all(v > 0 for v in sweep.values())
    assert status["chat"] is True
    assert status["request_topic"] == f"{daemon.prefix}/request"


def test_v5_request_gets_one_done_reply_with_correlation(client: Client, daemon: Daemon):
    replies = ask(
        client, daemon, {"prompt": "What is the capital of France?", "max_tokens": 24, **GREEDY}
    )
    assert len(replies) == 1
    done = replies[0]
    assert done.body["type"] == "done"
    assert done.correlation is not None and done.correlation.startswith(b"corr-")
    assert "Paris" in done.body["text"]
    assert done.body["finish_reason"] in ("stop", "length")
    usage = done.body["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 24
    timings = done.body["timings"]
    assert 0 <= timings["queue_ms"] <= timings["ttft_ms"] <= timings["total_ms"]
    assert timings["tokens_per_s"] > 0


def test_mqtt311_client_with_reply_to(client311: Client, daemon: Daemon):
    replies = ask(
        client311, daemon, {"id": "v3-req", "prompt": "Say hello.", "max_tokens": 16}, v5=False
    )
    assert [r.body["type"] for r in replies] == ["done"]
    assert replies[0].body["id"] == "v3-req"
    assert replies[0].body["text"].strip()


def test_plain_text_payload_answers_on_the_default_topic(client311: Client, daemon: Daemon):
    client311.subscribe(f"{daemon.prefix}/response/+")
    client311.publish(f"{daemon.prefix}/request", "Name a colour.")
    reply = client311.next(f"{daemon.prefix}/response/+", 120)
    assert reply.body["type"] == "done"
    assert reply.topic == f"{daemon.prefix}/response/{reply.body['id']}"
    assert reply.body["text"].strip()


def test_chat_messages_and_system_prompt_reach_the_template(client: Client, daemon: Daemon):
    user = {"role": "user", "content": "What colour is grass?"}
    short = {"role": "system", "content": "Be brief."}
    long = {
        "role": "system",
        "content": "You are a patient gardener. You explain plants, "
        "soil, light and water to children in simple words, one short sentence at a time.",
    }
    r_short = ask(client, daemon, {"messages": [short, user], "max_tokens": 8, **GREEDY})[-1].body
    r_long = ask(client, daemon, {"messages": [long, user], "max_tokens": 8, **GREEDY})[-1].body
    via_field = ask(
        client,
        daemon,
        {"system": long["content"], "prompt": user["content"], "max_tokens": 8, **GREEDY},
    )[-1].body
    assert r_short["type"] == r_long["type"] == via_field["type"] == "done"
    assert r_short["text"].strip() and r_long["text"].strip()
    # The system text went into the prompt, the same way through both request forms.
    assert r_long["usage"]["prompt_tokens"] - r_short["usage"]["prompt_tokens"] >= 15
    assert via_field["usage"]["prompt_tokens"] == r_long["usage"]["prompt_tokens"]
    assert via_field["text"] == r_long["text"]


def test_streaming_deltas_in_order_then_done(client: Client, daemon: Daemon):
    replies = ask(
        client,
        daemon,
        {"prompt": "Tell me about the moon.", "max_tokens": 40, "stream": True, **GREEDY},
    )
    *deltas, done = replies
    assert done.body["type"] == "done"
    assert len(deltas) >= 5
    assert all(d.body["type"] == "delta" for d in deltas)
    assert [d.body["seq"] for d in deltas] == list(range(len(deltas)))
    assert done.body["seq"] == len(deltas)
    assert "".join(d.body["text"] for d in deltas) == done.body["text"]
    assert all(d.correlation == done.correlation for d in deltas)


def test_sentence_mode_streams_whole_sentences(client: Client, daemon: Daemon):
    replies = ask(
        client,
        daemon,
        {
            "prompt": "Explain in three sentences why the sky is blue.",
            "max_tokens": 120,
            "stream": "sentences",
            **GREEDY,
        },
    )
    *sentences, done = replies
    assert done.body["type"] == "done"
    assert len(sentences) >= 2
    for s in sentences[:-1]:
        text = s.body["text"]
        assert text == text.strip()
        assert text[-1] in ".!?…:\"')]" or "\n" in done.body["text"], text
    joined = " ".join(s.body["text"] for s in sentences)
    assert joined.split() == done.body["text"].split()


def test_stop_string_ends_generation_and_is_not_returned(client: Client, daemon: Daemon):
    body = {"prompt": "Count from 1 to 10, separated by commas.", "max_tokens": 60, **GREEDY}
    free = ask(client, daemon, body)[-1].body["text"]
    assert "5" in free, free
    stopped = ask(client, daemon, {**body, "stop": ["5"]})[-1].body
    assert stopped["finish_reason"] == "stop"
    assert "5" not in stopped["text"]
    assert free.startswith(stopped["text"])


def test_same_seed_same_text(client: Client, daemon: Daemon):
    body = {
        "prompt": "Write a short poem about rain.",
        "max_tokens": 30,
        "temperature": 0.9,
        "seed": 1234,
    }
    first = ask(client, daemon, body)[-1].body["text"]
    second = ask(client, daemon, body)[-1].body["text"]
    assert first == second


def test_max_tokens_above_the_limit_is_clamped_and_said(client: Client, daemon: Daemon):
    done = ask(client, daemon, {"prompt": "Hi", "max_tokens": 100000, "stop": ["."], **GREEDY})[
        -1
    ].body
    assert done["type"] == "done"
    assert done["max_tokens"] == {"requested": 100000, "used": 1024, "reason": "limit"}


def test_prompt_longer_than_the_context_is_too_long(client: Client, daemon: Daemon):
    words = " ".join(f"word{i}" for i in range(6000))  # ~12k tokens, under the byte limit
    err = ask(client, daemon, {"prompt": words})[-1].body
    assert err["type"] == "error"
    assert err["code"] == "too_long"
    assert "context holds 2048" in err["message"]


def test_cancel_stops_a_running_generation(client: Client, daemon: Daemon):
    topic = f"{daemon.prefix}/response/test/{uuid.uuid4().hex}"
    client.subscribe(topic)
    client.publish(
        f"{daemon.prefix}/request",
        json.dumps(
            {
                "id": "to-cancel",
                "prompt": "Write a very long story about a dragon.",
                "max_tokens": 1000,
                "stream": True,
                "temperature": 0.8,
                "seed": 3,
            }
        ),
        response_topic=topic,
    )
    first = client.next(topic, 60)
    assert first.body["type"] == "delta"
    sent = time.monotonic()
    client.publish(f"{daemon.prefix}/cancel", json.dumps({"id": "to-cancel"}))
    rest = client.until_terminal(topic, 30)
    assert time.monotonic() - sent < 2.0
    err = rest[-1].body
    assert err["type"] == "error" and err["code"] == "cancelled"
    assert err["usage"]["completion_tokens"] < 1000
    assert client.quiet(topic, 0.5) == []


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "bad_request"),
        (json.dumps({"prompt": 42}).encode(), "bad_request"),
        (json.dumps({"prompt": "x", "temperature": "hot"}).encode(), "bad_request"),
        (json.dumps({"prompt": "x", "favourite": 1}).encode(), "bad_request"),
        (b"", "bad_request"),
        (bytes(range(256)), "bad_request"),
        (b"x" * 1_000_000, "too_long"),
    ],
    ids=["invalid-json", "wrong-type", "wrong-type-2", "unknown-field", "empty", "binary", "1MB"],
)
def test_malformed_request_gets_error_and_daemon_keeps_serving(
    client: Client, daemon: Daemon, payload: bytes, code: str
):
    replies = ask(client, daemon, payload, timeout=30)
    assert len(replies) == 1
    assert replies[0].body["type"] == "error"
    assert replies[0].body["code"] == code
    assert replies[0].body["message"]
    assert daemon.alive()
    ok = ask(client, daemon, {"prompt": "Say yes.", "max_tokens": 4})
    assert ok[-1].body["type"] == "done"


def test_unanswerable_malformed_request_is_logged_not_answered(client: Client, daemon: Daemon):
    client.subscribe(f"{daemon.prefix}/response/+")
    client.publish(f"{daemon.prefix}/request", b"{no reply address")
    assert client.quiet(f"{daemon.prefix}/response/+", 1.0) == []
    events = [e for e in daemon.log_events() if e.get("event") == "request_rejected_unanswerable"]
    assert events and events[-1]["code"] == "bad_request"
    assert ask(client, daemon, {"prompt": "Say yes.", "max_tokens": 4})[-1].body["type"] == "done"


def test_one_log_line_per_request_and_no_prompt_text(client: Client, daemon: Daemon):
    secret = f"my-secret-{uuid.uuid4().hex}"
    done = ask(
        client,
        daemon,
        {"id": "logged-1", "prompt": f"Repeat: {secret}", "max_tokens": 30, **GREEDY},
    )[-1].body
    assert done["type"] == "done"
    time.sleep(0.2)
    lines = [
        e for e in daemon.log_events() if e.get("event") == "request" and e.get("id") == "logged-1"
    ]
    assert len(lines) == 1
    line = lines[0]
    assert line["outcome"] == "done"
    assert line["completion_tokens"] == done["usage"]["completion_tokens"]
    assert {"ttft_ms", "total_ms", "tokens_per_s", "prompt_tokens"} <= set(line)
    assert secret not in daemon.log()
