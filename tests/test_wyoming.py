"""The Wyoming front door, end to end: the real daemon and model, the wyoming package's client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wyoming.asr import Transcript
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled
from wyoming.info import Describe, Info

from tests.helpers import LOOPBACK, Broker, Daemon, free_port, poll

pytestmark = pytest.mark.model

TERMINAL = ("handled", "not-handled", "error")
STORY = "Write a very long story about a dragon and a knight, with many chapters."


@pytest.fixture(scope="module")
def wyoming(
    broker: Broker, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    settings: dict[str, Any] = {
        "wyoming": {"port": port, "languages": ["en", "de"]},
        "generation": {"max_tokens": 400},
    }
    d = Daemon(broker, tmp_path_factory.mktemp("wyoming"), settings=settings).start()
    yield d, port
    d.stop()


async def answer(client: AsyncTcpClient, timeout: float = 120) -> list[Event]:
    """Every event up to and including the first terminal one (handled, not-handled, error)."""
    events: list[Event] = []
    while True:
        event = await asyncio.wait_for(client.read_event(), timeout)
        assert event is not None, f"connection closed after {[e.type for e in events]}"
        events.append(event)
        if event.type in TERMINAL:
            return events


async def ask(port: int, event: Event) -> list[Event]:
    async with AsyncTcpClient(LOOPBACK, port) as client:
        await client.write_event(event)
        return await answer(client)


def test_describe_lists_edgellm_as_a_handle_program(wyoming: tuple[Daemon, int]):
    d, port = wyoming

    async def describe() -> Event | None:
        async with AsyncTcpClient(LOOPBACK, port) as client:
            await client.write_event(Describe().event())
            return await asyncio.wait_for(client.read_event(), 10)

    event = asyncio.run(describe())
    assert event is not None and Info.is_type(event.type)
    info = Info.from_event(event)
    # Named after the node: Home Assistant names the agent (and its entity) after the program.
    assert [p.name for p in info.handle] == [f"edgellm {d.node_id}"]
    program = info.handle[0]
    assert program.installed and program.supports_handled_streaming
    assert [m.name for m in program.models] == ["smollm2-135m"]
    assert program.models[0].installed and program.models[0].languages == ["en", "de"]
    # Home Assistant's integration takes the first installed intent or handle program: no other.
    assert info.asr == info.tts == info.intent == info.wake == []
    assert d.wait_status("online")["wyoming"] == {"host": LOOPBACK, "port": port}


def test_transcript_is_handled_with_streamed_sentences(wyoming: tuple[Daemon, int]):
    _d, port = wyoming
    context = {"conversation_id": "01TESTCONVERSATION"}
    events = asyncio.run(
        ask(port, Transcript("What is the capital of France?", context, "en").event())
    )
    types = [e.type for e in events]
    assert types[-1] == "handled", types
    handled = Handled.from_event(events[-1])
    assert handled.text and handled.text.strip()
    assert handled.context == context  # Home Assistant's conversation id comes back
    # Streaming: start, one chunk per sentence, stop, then the whole text for clients that
    # wait for `handled` only (Home Assistant's conversation entity).
    assert types[0] == "handled-start" and types[-2] == "handled-stop", types
    assert set(types[1:-2]) == {"handled-chunk"}, types
    assert HandledStart.from_event(events[0]).context == context
    chunks = "".join(HandledChunk.from_event(e).text for e in events[1:-2])
    # Joined as a client joins them, the chunks read as the text (spacing aside: the model's
    # newlines between sentences become spaces).
    assert chunks.split() == handled.text.split()
    assert HandledStop.is_type(events[-2].type)


async def _bad_inputs_then_a_good_one(port: int) -> list[list[Event]]:
    answers = []
    async with AsyncTcpClient(LOOPBACK, port) as client:
        for event in (
            Transcript("   ").event(),
            Event(type="transcript", data={"language": "en"}),
            Event(type="synthesize", data={"text": "hello"}),
        ):
            await client.write_event(event)
            answers.append(await answer(client, 10))
    # Bytes no Wyoming client would send, on a connection of its own.
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(b"this is not json\n")
    await writer.drain()
    reply = await asyncio.wait_for(async_read_event(reader), 10)
    answers.append([reply] if reply is not None else [])
    # A block too large to read: an error, then the connection closes (its framing is lost).
    writer.write(b'{"type": "transcript", "data_length": 1000000000}\n')
    await writer.drain()
    reply = await asyncio.wait_for(async_read_event(reader), 10)
    answers.append([reply] if reply is not None else [])
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    answers.append(await ask(port, Transcript("Say hello.").event()))
    return answers


def test_bad_input_gets_a_clear_answer_and_the_daemon_keeps_serving(
    wyoming: tuple[Daemon, int],
):
    _d, port = wyoming
    empty, no_text, unknown, garbage, huge, good = asyncio.run(_bad_inputs_then_a_good_one(port))
    assert [e.type for e in empty] == ["not-handled"]
    assert "empty transcript" in (NotHandled.from_event(empty[0]).text or "")
    assert [e.type for e in no_text] == ["not-handled"]
    assert "text string" in (NotHandled.from_event(no_text[0]).text or "")
    assert [e.type for e in unknown] == ["error"]
    assert "synthesize" in Error.from_event(unknown[0]).text
    assert [e.type for e in garbage] == ["error"]
    assert "not a JSON object" in Error.from_event(garbage[0]).text
    assert [e.type for e in huge] == ["error"]
    assert "data_length is 1000000000 bytes" in Error.from_event(huge[0]).text
    assert good[-1].type == "handled" and Handled.from_event(good[-1]).text


def _events(d: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") == name]


def test_a_client_that_disconnects_cancels_its_generation(wyoming: tuple[Daemon, int]):
    d, port = wyoming
    before = len(_events(d, "cancel"))

    async def leave_mid_answer() -> None:
        client = AsyncTcpClient(LOOPBACK, port)
        await client.connect()
        await client.write_event(Transcript(STORY).event())
        first = await asyncio.wait_for(client.read_event(), 120)
        assert first is not None and first.type == "handled-start"  # it is generating now
        await client.disconnect()

    asyncio.run(leave_mid_answer())
    cancels = poll(lambda: _events(d, "cancel")[before:], 30, "a cancel")
    assert [(e["client"], e["found"]) for e in cancels] == [("wyoming:127.0.0.1", True)]
    rid = cancels[0]["id"]
    line = poll(
        lambda: [e for e in _events(d, "request") if e["id"] == rid], 30, "its request line"
    )[0]
    assert line["outcome"] == "cancelled"
    assert line["usage"]["completion_tokens"] < 400
    # The worker is free again: the next transcript is answered.
    good = asyncio.run(ask(port, Transcript("Say hello.").event()))
    assert good[-1].type == "handled"


def test_port_taken_the_daemon_still_comes_online(broker: Broker, model_path: Path, tmp_path: Path):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = {"wyoming": {"port": port}, "governor": {"thread_sweep": False}}
        d = Daemon(broker, tmp_path, settings=settings).start()
        try:
            status = d.wait_status("online")
            assert "wyoming" not in status
            unavailable = [e for e in d.log_events() if e.get("event") == "wyoming_unavailable"]
            assert [e["port"] for e in unavailable] == [port]
        finally:
            d.stop()
