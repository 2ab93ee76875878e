"""The engine applies new limits live: threads between tokens, context between jobs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import config
from daemon.engine import Engine
from daemon.frontends.mqtt_messages import Incoming, parse_request
from daemon.frontends.topics import Topics
from daemon.requests import Job, Request
from tests.helpers import poll

pytestmark = pytest.mark.model

CFG = config.load(None)
# Two threads whatever the machine has (the default is its core count), so there is a change
# to make from 2 to 1 and back; two threads on one core are slow but correct.
MODEL = CFG.model.model_copy(update={"n_threads": 2})


class Sink:
    """Collects one job's replies."""

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.result: dict = {}
        self.finished = threading.Event()

    def delta(self, request: Request, seq: int, text: str) -> None:
        self.deltas.append(text)

    def done(self, request: Request, done) -> None:
        self.result = {"type": "done", "done": done}
        self.finished.set()

    def error(self, request: Request, code, message: str, extra: dict) -> None:
        self.result = {"type": "error", "code": str(code), "message": message}
        self.finished.set()


def submit(engine: Engine, body: str) -> Sink:
    req = parse_request(
        Incoming(body.encode(), "r", None, time.monotonic()), Topics("e", "n"), CFG.limits
    )
    assert isinstance(req, Request)
    sink = Sink()
    engine.submit(Job(req, sink))
    return sink


@pytest.fixture(scope="module")
def engine(model_path: Path) -> Iterator[Engine]:
    e = Engine(model_path, "smollm2-135m", MODEL, CFG.generation, CFG.limits)
    e.start()
    yield e
    e.stop(1)


def test_thread_change_takes_effect_during_a_generation(engine: Engine):
    assert engine.native_limits()[0] == engine.threads == 2
    sink = submit(
        engine,
        '{"prompt": "Write a long story.", "max_tokens": 300, "stream": true,'
        ' "temperature": 0.8, "seed": 2}',
    )
    poll(lambda: len(sink.deltas) >= 5 or sink.finished.is_set(), 60, "5 deltas", every=0.005)
    assert not sink.finished.is_set(), sink.result
    engine.set_limits(threads=1)
    # A generous deadline, not a speed: how fast it applies (between two tokens, ~11 ms) is
    # measured by bench/governor_reaction.py; here, that it applies during the generation.
    poll(lambda: engine.native_limits()[0] == 1, 30, "threads 1", every=0.001)
    assert not sink.finished.is_set()
    assert sink.finished.wait(60) and sink.result["type"] == "done"
    engine.set_limits(threads=2)
    assert submit(engine, "Hi").finished.wait(30)
    assert engine.native_limits()[0] == 2


def test_context_rebuild_between_jobs_keeps_serving(engine: Engine):
    engine.set_limits(n_ctx=512)
    long_prompt = " ".join(f"w{i}" for i in range(400))  # > 512 tokens
    sink = submit(engine, long_prompt)
    assert sink.finished.wait(30)
    assert engine.native_limits()[1] == 512
    assert sink.result["code"] == "too_long"
    assert "context holds 512" in sink.result["message"]
    ok = submit(engine, '{"prompt": "Say hi.", "max_tokens": 5}')
    assert ok.finished.wait(30) and ok.result["type"] == "done"
    engine.set_limits(n_ctx=2048)
    sink = submit(engine, '{"prompt": "' + long_prompt + '", "max_tokens": 4}')
    assert sink.finished.wait(60) and sink.result["type"] == "done"
    assert engine.native_limits()[1] == 2048


def test_thread_sweep_picks_a_measured_count(model_path: Path):
    e = Engine(model_path, "smollm2-135m", MODEL, CFG.generation, CFG.limits)
    e.start(sweep_threads=True)
    try:
        # A job sent while the sweep is under way is served between its slices.
        assert submit(e, '{"prompt": "Hi", "max_tokens": 2}').finished.wait(60)
        # A few slices of ~0.6 s at most per thread count, counts up to every CPU there is.
        budget = 60 + 4 * (os.cpu_count() or 1)
        poll(lambda: e.sweep, budget, "the sweep")
        assert e.sweep is not None and e.sweep.samples >= 3 * len(e.sweep.tokens_per_s)
        # Every count from 1 up to at least the 2 threads configured (more on a bigger machine).
        counts = sorted(e.sweep.tokens_per_s)
        assert counts == list(range(1, len(counts) + 1)) and len(counts) >= 2
        assert all(v > 0 for v in e.sweep.tokens_per_s.values())
        assert e.sweep.best == e.threads == e.native_limits()[0]
        best = e.sweep.tokens_per_s[e.sweep.best]
        assert best >= 0.97 * max(e.sweep.tokens_per_s.values())
    finally:
        e.stop(1)
