"""Shared fixtures: a real mosquitto on loopback, the real default model, running daemons."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Broker, Client, Daemon, free_port

# tests/run.sh fetches the model and sets this, so a missing model fails there instead of skipping.
REQUIRE_MODEL = os.environ.get("EDGELLM_REQUIRE_MODEL") == "1"

# The CPU probe's verdicts go to a state dir of this run's own (daemons started by the tests
# inherit it): the suite runs the real probe once, and never reads a verdict left by another run.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="edgellm-test-state-")
os.environ.pop("STATE_DIRECTORY", None)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(free_port(), tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def model_path() -> Path:
    from daemon import models

    try:
        return models.locate(models.DEFAULT_MODEL, None)
    except models.ModelError as err:
        if REQUIRE_MODEL:
            raise
        pytest.skip(f"default model not installed ({err}); run tests/run.sh")


@pytest.fixture(scope="session")
def daemon(
    broker: Broker, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """One daemon on the default model, shared by the end-to-end tests that leave it healthy."""
    d = Daemon(broker, tmp_path_factory.mktemp("daemon")).start()
    yield d
    d.stop()


@pytest.fixture
def client(broker: Broker) -> Iterator[Client]:
    c = Client(broker)
    yield c
    c.close()


@pytest.fixture
def client311(broker: Broker) -> Iterator[Client]:
    c = Client(broker, v5=False)
    yield c
    c.close()


@pytest.fixture(scope="session")
def tool_daemon(
    broker: Broker, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """The default model with a Hermes-style chat template that renders `tools` (tests/data):
    the tool path end to end on a model whose own template takes none."""
    template = (Path(__file__).parent / "data" / "hermes-tools.jinja").read_text()
    # No thread sweep: an idle daemon's sweeps (and their back-off re-sweeps when contended)
    # would load the CPU under the tests that come after, including the ones that time a sweep.
    settings = {"model": {"chat_template": template}, "governor": {"thread_sweep": False}}
    d = Daemon(broker, tmp_path_factory.mktemp("tools"), settings=settings).start()
    yield d
    d.stop()
