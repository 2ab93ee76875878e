"""Supervision: a fault at any point of the worker loop answers the job it held `internal` and
the worker goes on; a worker that cannot go on takes the daemon offline with a reason."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from daemon import config
from daemon.engine import Engine, llama_compat
from daemon.frontends.mqtt_messages import Incoming, parse_request
from daemon.frontends.topics import Topics
from daemon.requests import Job, QueueFull, Request
from daemon.sdnotify import Notifier
from daemon.service import EXIT_ENGINE, Service
from tests.helpers import Broker, Client, poll

pytestmark = pytest.mark.model

CFG = config.load(None)
STEPS = ("beat", "sweep", "limits", "run")


class FaultyEngine(Engine):
    """The real engine with faults injected at named steps of its loop (the _checkpoint seam)."""

    plan: ClassVar[dict[str, int]] = {}  # step -> faults still to inject there (set per test)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.faults = dict(type(self).plan)
        self.injected: list[str] = []

    def _checkpoint(self, step: str) -> None:
        if self.faults.get(step, 0) > 0:
            self.faults[step] -= 1
            self.injected.append(step)
            raise RuntimeError(f"injected fault at {step}")


class Sink:
    """Collects one job's terminal replies (a second one would be a defect)."""

    def __init__(self) -> None:
        self.terminal: list[dict] = []
        self.finished = threading.Event()

    def delta(self, request: Request, seq: int, text: str) -> None:
        pass

    def done(self, request: Request, done: Any) -> None:
        self.terminal.append({"type": "done", "text": done.text})
        self.finished.set()

    def error(self, request: Request, code: Any, message: str, extra: dict) -> None:
        self.terminal.append({"type": "error", "code": str(code), "message": message})
        self.finished.set()


def submit(engine: Engine, prompt: str = "Say hi.") -> Sink:
    body = json.dumps({"prompt": prompt, "max_tokens": 4, "temperature": 0})
    req = parse_request(
        Incoming(body.encode(), "r", None, time.monotonic()), Topics("e", "n"), CFG.limits
    )
    assert isinstance(req, Request)
    sink = Sink()
    engine.submit(Job(req, sink))
    return sink


def answer(sink: Sink, timeout: float = 60) -> dict:
    assert sink.finished.wait(timeout), "no terminal reply"
    assert len(sink.terminal) == 1, sink.terminal
    return sink.terminal[0]


def make(model_path: Path, plan: dict[str, int]) -> FaultyEngine:
    FaultyEngine.plan = plan
    engine = FaultyEngine(model_path, "smollm2-135m", CFG.model, CFG.generation, CFG.limits)
    engine.start()
    return engine


@pytest.fixture
def stopper() -> Iterator[list[Engine]]:
    engines: list[Engine] = []
    yield engines
    for e in engines:
        e.stop(1)


@pytest.mark.parametrize("step", STEPS)
def test_one_fault_at_any_step_is_survived(step, model_path: Path, stopper):
    engine = make(model_path, {step: 1})
    stopper.append(engine)
    if step == "sweep":
        engine.request_sweep()
        # A sweep slice runs only after a pause without jobs: let the fault land first.
        poll(lambda: engine.injected, 10, "the sweep's checkpoint")
    if step == "limits":
        engine.set_limits(threads=1)
    first = submit(engine)
    reply = answer(first)
    if step in ("limits", "run"):
        # The fault hit while the worker held this job: it is answered, not lost.
        assert reply == {
            "type": "error",
            "code": "internal",
            "message": "internal error while generating",
        }
    else:
        assert reply["type"] == "done"
    assert engine.injected == [step]
    assert answer(submit(engine))["type"] == "done"
    assert not engine.failed.is_set()


def test_repeated_faults_fail_the_engine_and_answer_every_waiting_job(model_path, stopper):
    engine = make(model_path, {"run": 99})
    stopper.append(engine)
    sinks = [submit(engine) for _ in range(5)]
    replies = [answer(s) for s in sinks]
    assert engine.failed.wait(10)
    assert "3 faults in a row" in (engine.failure or "")
    assert [r["code"] for r in replies].count("internal") == 5
    with pytest.raises(QueueFull):
        submit(engine)


def test_a_failed_recovery_fails_the_engine_at_once(model_path, stopper):
    engine = make(model_path, {"run": 1, "recover": 1})
    stopper.append(engine)
    assert answer(submit(engine))["code"] == "internal"
    assert engine.failed.wait(10)
    assert "cannot recover" in (engine.failure or "")


def test_a_fault_halfway_through_a_context_rebuild_is_repaired(model_path, stopper, monkeypatch):
    """The old context is freed before the new one is made: a fault between the two leaves
    none. Recovery builds one at the last good size."""
    engine = make(model_path, {})
    stopper.append(engine)
    real = llama_compat.rebuild_context
    calls = []

    def breaks_once(llm: Any, n_ctx: int) -> None:
        calls.append(n_ctx)
        if len(calls) == 1:
            llm._ctx.close()
            raise MemoryError("injected: no memory for the new KV cache")
        real(llm, n_ctx)

    monkeypatch.setattr(llama_compat, "rebuild_context", breaks_once)
    start = engine.n_ctx
    engine.set_limits(n_ctx=1024)
    held = submit(engine)
    assert answer(held)["code"] == "internal"
    assert answer(submit(engine))["type"] == "done"
    assert calls == [1024, start]  # repaired at the last size in force
    assert engine.native_limits()[1] == start == engine.n_ctx
    assert not engine.failed.is_set()


# -- the service: never a dead worker behind an `online` status -------------------------------


def test_a_failed_engine_takes_the_daemon_offline_with_a_reason(
    broker: Broker, model_path: Path, tmp_path: Path
):
    FaultyEngine.plan = {"run": 99}
    cfg = config.parse(
        {
            "node_id": f"n{uuid.uuid4().hex[:6]}",
            "mqtt": {"host": broker.host, "port": broker.port},
            "governor": {"thread_sweep": False},
        }
    )
    service = Service(cfg, notifier=Notifier(None), engine_factory=FaultyEngine)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(service.run()), daemon=True)
    client = Client(broker)
    status = f"{service.topics.base}/status"
    client.subscribe(status)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while client.next(status, deadline - time.monotonic()).body["state"] != "online":
            pass
        replies = f"{service.topics.base}/response/t/#"
        client.subscribe(replies)
        for i in range(3):
            client.publish(
                service.topics.request,
                json.dumps({"id": f"q{i}", "prompt": "hi", "max_tokens": 2}),
                response_topic=f"{service.topics.base}/response/t/q{i}",
            )
        codes = [client.next(replies, 30).body["code"] for _ in range(3)]
        assert codes == ["internal"] * 3
        offline = client.next(status, 30).body
        assert offline["state"] == "offline"
        assert "faults in a row" in offline["reason"]
        thread.join(30)
        assert result == [EXIT_ENGINE]
    finally:
        service.stop_event.set()
        thread.join(30)
        client.close()
