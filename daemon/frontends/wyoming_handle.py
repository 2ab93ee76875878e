"""The Wyoming front door: a `handle` service Home Assistant's Wyoming integration offers as a
conversation agent, and voice satellites can talk to.

`describe` gets `info` (one handle program, edgellm); a `transcript` becomes a Request through
intake like any other, answered with `handled` (the whole text) or `not-handled` (why not). With
wyoming.streaming, handled-start / handled-chunk (one per sentence) / handled-stop come first:
Home Assistant's conversation entity skips events it does not know and waits for `handled`.
A client that disconnects cancels its generation.

The wyoming package is asyncio; the daemon is threads. The server runs its own event loop on
one thread; replies from the engine's worker thread are handed into that loop with
call_soon_threadsafe, onto the connection's outbox, which one task writes in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from typing import Any

import structlog
from wyoming.asr import Transcript
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled, HandledChunk, HandledStart, HandledStop, NotHandled
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncTcpServer

from daemon.config import Config
from daemon.frontends.wyoming_events import (
    BadEvent,
    context_of,
    info_event,
    parse_transcript,
    read_event,
)
from daemon.intake import Intake, log_request
from daemon.requests import Done, ErrorCode, Rejection, Request

log = structlog.get_logger(__name__)

# A connection's queued replies: at most one generation's sentences plus its ending, bounded
# by max_tokens, so the outbox needs no bound of its own.
_CLOSE = None


class _Answers:
    """intake.Answers for one transcript: Wyoming events onto its connection's outbox."""

    def __init__(self, conn: _Connection, context: dict[str, Any] | None):
        self._conn = conn
        self._context = context
        self._streaming = False
        # Set by the terminal reply (any thread): the connection may take the next transcript.
        self.finished = threading.Event()
        self.request: Request | None = None

    def _send(self, event: Event) -> bytes:
        self._conn.send(event)
        return json.dumps({"type": event.type, "data": event.data}).encode()

    def delta(self, request: Request, seq: int, text: str) -> None:
        if not self._streaming:
            self._streaming = True
            self._send(HandledStart(context=self._context).event())
        else:
            # Sentences come without the white space between them; a client joins the chunks.
            text = " " + text
        self._send(HandledChunk(text=text).event())

    def done(self, request: Request, done: Done) -> bytes:
        if self._streaming:
            self._send(HandledStop().event())
        self.finished.set()
        return self._send(Handled(text=done.text, context=self._context).event())

    def error(self, request: Request, code: ErrorCode, message: str, extra: dict) -> bytes:
        if self._streaming:
            self._send(HandledStop().event())
        self.finished.set()
        return self._send(NotHandled(text=message, context=self._context).event())

    def again(self, request: Request, payload: bytes) -> None:
        # Every transcript gets a fresh id, so intake never sees a duplicate; answer anyway.
        body = json.loads(payload)
        self.finished.set()
        self._conn.send(Event(type=body["type"], data=body["data"]))

    def refuse(self, rejection: Rejection) -> None:
        self._conn.counters[f"rejected_{rejection.code}"] += 1
        self.finished.set()
        self._send(NotHandled(text=rejection.message, context=self._context).event())
        log_request(rejection.id, rejection.client, str(rejection.code), detail=rejection.message)


class _Connection(AsyncEventHandler):
    """One Wyoming client: reads events, answers them, cancels its generation when it goes."""

    def __init__(
        self,
        door: WyomingDoor,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ):
        super().__init__(reader, writer)
        self._door = door
        self.counters = door.counters
        self._loop = asyncio.get_running_loop()
        self._outbox: asyncio.Queue[Event | None] = asyncio.Queue()
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else "local"
        # The client's name for rate limits and the allow-list: one per address, not per
        # connection (Home Assistant opens one connection per transcript).
        self.client = f"wyoming:{host}"
        self._job: _Answers | None = None

    def send(self, event: Event | None) -> None:
        """Queue an event for this connection, from any thread; dropped once the loop is gone."""
        with contextlib.suppress(RuntimeError):  # the loop closed: the daemon is stopping
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, event)

    async def _write_outbox(self) -> None:
        while (event := await self._outbox.get()) is not None:
            try:
                await self.write_event(event)
            except (ConnectionError, RuntimeError) as err:
                log.info("wyoming_write_failed", client=self.client, error=str(err))
                return

    async def run(self) -> None:
        """Read events until the client goes (or the server stops); bad ones get an `error`."""
        writer_task = asyncio.create_task(self._write_outbox())
        log.debug("wyoming_connected", client=self.client)
        try:
            while True:
                try:
                    event = await read_event(self.reader)
                except BadEvent as bad:
                    self.counters["rejected_wyoming_event"] += 1
                    log.warning("wyoming_bad_event", client=self.client, detail=bad.message)
                    self.send(Error(text=bad.message, code=str(ErrorCode.BAD_REQUEST)).event())
                    if bad.fatal:
                        break
                    continue
                except ConnectionError:
                    break
                if event is None or not await self.handle_event(event):
                    break
        finally:
            await self.disconnect()
            self.send(_CLOSE)  # the same path as the replies: after what is already queued
            # Let what is queued (an error reply) go out before the socket closes.
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                await asyncio.wait_for(writer_task, 1.0)
            self.writer.close()
            log.debug("wyoming_disconnected", client=self.client)

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; always True (a bad one gets an error, the connection stays)."""
        if Describe.is_type(event.type):
            self.send(self._door.info)
        elif Ping.is_type(event.type):
            text = event.data.get("text")
            self.send(Pong(text=text if isinstance(text, str) else None).event())
        elif Transcript.is_type(event.type):
            try:
                self._transcript(event)
            except Exception:
                # Never a client left without a word: log the bug, answer, keep serving.
                log.exception("wyoming_transcript_failed", client=self.client)
                self.send(NotHandled(text="internal error", context=context_of(event)).event())
        else:
            self.counters["rejected_wyoming_event"] += 1
            message = f"edgellm answers describe, transcript and ping, not {event.type[:64]!r}"
            self.send(Error(text=message, code=str(ErrorCode.BAD_REQUEST)).event())
        return True

    def _transcript(self, event: Event) -> None:
        answers = _Answers(self, context_of(event))
        if self._job is not None and not self._job.finished.is_set():
            # One at a time per connection: the answers would interleave otherwise.
            answers.refuse(
                Rejection(
                    ErrorCode.BUSY,
                    "this connection is still waiting for its previous answer",
                    client=self.client,
                )
            )
            return
        parsed = parse_transcript(event, self._door.cfg, self.client)
        if isinstance(parsed, Rejection):
            answers.refuse(parsed)
            return
        answers.request = parsed
        self._job = answers
        self._door.intake.take(parsed, answers)

    async def disconnect(self) -> None:
        """The client went: a generation it still waits for is cancelled (nobody would hear)."""
        job = self._job
        if job is not None and job.request is not None and not job.finished.is_set():
            self._door.intake.cancel(job.request.id, self.client)


class WyomingDoor:
    """The Wyoming TCP server on an asyncio loop of its own thread."""

    def __init__(
        self,
        cfg: Config,
        intake: Intake,
        counters: Counter,
        model: str,
        metadata: dict[str, str],
    ):
        self.cfg = cfg  # replaced on a reload (limits are live)
        self.intake = intake
        self.counters = counters
        self.info = info_event(cfg, model, metadata)
        self._server = AsyncTcpServer(cfg.wyoming.host, cfg.wyoming.port)
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    def follow(self, model: str, metadata: dict[str, str]) -> None:
        """Another model was swapped in: describe it from now on."""
        self.info = info_event(self.cfg, model, metadata)

    def start(self) -> bool:
        """Listen on wyoming.host:port; False (logged) when it cannot, e.g. the port is taken."""
        wcfg = self.cfg.wyoming
        try:
            # Bound here, on the caller's thread, so a taken port is known before it returns.
            self._loop.run_until_complete(self._server.start(self._handler))
        except OSError as err:
            log.warning(
                "wyoming_unavailable", host=wcfg.host, port=wcfg.port, error=str(err.strerror)
            )
            self._loop.close()
            return False
        self._thread = threading.Thread(target=self._run, name="wyoming", daemon=True)
        self._thread.start()
        log.info("wyoming_listening", host=wcfg.host, port=wcfg.port)
        return True

    def _handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Connection:
        return _Connection(self, reader, writer)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        except Exception:
            # Replies to Wyoming clients stop; MQTT goes on. Say so rather than die silently.
            log.exception("wyoming_loop_failed")

    async def _close(self) -> None:
        await self._server.stop()  # each connection sees the end of its stream and cancels
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=1.0)

    def stop(self, timeout: float = 3.0) -> None:
        """Close every connection (cancelling what they wait for), stop listening, end the loop."""
        if self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
        try:
            future.result(timeout)
        except Exception as err:
            log.warning("wyoming_stop_incomplete", error=repr(err))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()
        self._thread = None
        log.info("wyoming_stopped")
