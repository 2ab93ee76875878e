"""The model slot (daemon/slot.py) with engines faked at its named seam: the order of a swap,
the memory check before anything is unloaded, the rollback, unload and reload, the gate."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from daemon import config, devbench
from daemon.engine import EngineError, ModelInfo
from daemon.estimate import MIB, swap_shortfall
from daemon.frontends.mqtt_admin import parse
from daemon.slot import ModelSlot, SwapError
from tests import fakesys

OLD, NEW = "smollm2-135m", "gemma3-270m"


class FakeEngine:
    """What the slot uses of an Engine; `fail` makes start() fail, `hold` keeps a job running."""

    def __init__(self, path: Path, name: str, log: list[str], fail: bool, hold: threading.Event):
        self.path, self.name, self._log, self._fail, self._hold = path, name, log, fail, hold
        self.failed = threading.Event()
        self.failure = None
        self.n_ctx = 4096
        self.threads = self.threads_batch = 2
        self.sweep = None
        self.queue_depth = 0
        self.stopped_with: str | None = None

    @property
    def busy(self) -> bool:
        return not self._hold.is_set()

    def start(self, sweep_threads: bool = False) -> ModelInfo:
        self._log.append(f"start {self.name}")
        if self._fail:
            raise EngineError(f"cannot load model {self.path}: not a model")
        meta = {"general.architecture": "llama", "llama.block_count": "2"}
        return ModelInfo(self.name, str(self.path), 1000, 4096, 8192, 2, 2, True, meta)

    def stop(self, grace_s: float, reason: str = "") -> None:
        self._log.append(f"stop {self.name}")
        self.stopped_with = reason


class Harness:
    def __init__(self, tmp_path: Path, sysfs: Path | None = None):
        self.log: list[str] = []
        self.failing: set[str] = set()
        self.hold = threading.Event()
        self.hold.set()
        self.engines: list[FakeEngine] = []
        self.changes = 0
        self.files = {}
        for name in (OLD, NEW):
            path = tmp_path / f"{name}.gguf"
            path.write_bytes(b"GGUF" + bytes(100 * 1024))
            self.files[name] = path
        monitor = {"sysfs_root": str(sysfs)} if sysfs else {}
        self.cfg = config.parse(
            {"node_id": "n", "model": {"cpu_repack": "off"}, "monitor": monitor}
        )
        self.slot = ModelSlot(self.cfg, self.build, self.changed, locate=self.locate)

    def locate(self, name: str, _dir: Path | None) -> Path:
        if name not in self.files:
            from daemon.models import ModelError

            raise ModelError(f"{name} is not installed")
        return self.files[name]

    def build(self, path: Path, name: str, _verdict: Any) -> FakeEngine:
        engine = FakeEngine(path, name, self.log, name in self.failing, self.hold)
        self.engines.append(engine)
        return engine

    def changed(self) -> None:
        self.changes += 1


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    harness = Harness(tmp_path)
    harness.slot.start(OLD, harness.files[OLD])
    return harness


def test_a_swap_stops_the_old_engine_before_it_starts_the_new_one(h: Harness) -> None:
    h.slot.want(NEW, 10)
    assert h.log == [f"start {OLD}", f"stop {OLD}", f"start {NEW}"]
    assert h.slot.info is not None and h.slot.info.name == NEW and h.slot.state == "loaded"
    assert h.engines[0].stopped_with == f"the model is being swapped for {NEW}"
    assert h.changes == 1 and h.slot.last_swap is not None and h.slot.last_swap["error"] is None
    h.slot.want(NEW, 10)  # already loaded: nothing happens
    assert h.changes == 1


def test_a_failed_load_brings_the_old_model_back(h: Harness) -> None:
    h.failing.add(NEW)
    with pytest.raises(SwapError, match="cannot load model 'gemma3-270m'") as err:
        h.slot.want(NEW, 10)
    assert err.value.status == 500
    assert h.log == [f"start {OLD}", f"stop {OLD}", f"start {NEW}", f"start {OLD}"]
    assert h.slot.info is not None and h.slot.info.name == OLD and h.slot.failure is None


def test_when_neither_model_loads_the_slot_fails(h: Harness) -> None:
    h.failing.update({OLD, NEW})
    with pytest.raises(SwapError):
        h.slot.want(NEW, 10)
    assert h.slot.engine is None and h.slot.failure is not None
    assert "did not load again" in h.slot.failure


def test_names_outside_the_catalog_and_missing_files_are_404s(h: Harness) -> None:
    for name in ("/etc/passwd", "../x.gguf", "https://example.com/m.gguf"):
        with pytest.raises(SwapError, match="not in edgellm's catalog") as err:
            h.slot.want(name, 1)
        assert err.value.status == 404
    with pytest.raises(SwapError, match="not installed") as err:
        h.slot.want("qwen3-0.6b", 1)
    assert err.value.status == 404 and not h.slot.installed("qwen3-0.6b")
    assert h.log == [f"start {OLD}"]


def test_while_a_job_runs_the_gate_is_closed_and_a_second_swap_is_refused(h: Harness) -> None:
    h.hold.clear()  # the old engine's job keeps running: the swap waits for it
    waiter = threading.Thread(target=h.slot.want, args=(NEW, 30))
    waiter.start()
    try:
        gate = None
        while gate is None:
            gate = h.slot.gate()
        assert gate[0] == f"model {NEW} is loading; try again shortly" and gate[1] > 0
        assert h.slot.state == "loading"
        with pytest.raises(SwapError, match=f"model {NEW} is loading") as err:
            h.slot.want(OLD, 1)
        assert err.value.status == 503 and err.value.retry_after_s
        assert h.log == [f"start {OLD}"], "nothing stopped while the job runs"
    finally:
        h.hold.set()
        waiter.join(10)
    assert h.slot.gate() is None and h.log[-1] == f"start {NEW}"


def test_unload_then_the_first_request_loads_the_model_again(h: Harness) -> None:
    h.slot.unload()
    assert h.slot.engine is None and h.slot.state == "unloaded" and h.changes == 1
    h.slot.unload()  # nothing loaded: nothing to do
    gate = h.slot.gate()  # a request arrives: refused for now, and the load begins
    assert gate is not None and f"model {OLD} is loading" in gate[0]
    h.slot.want(OLD, 10)  # waits for that load
    assert h.slot.info is not None and h.slot.info.name == OLD and h.slot.gate() is None
    assert h.log == [f"start {OLD}", f"stop {OLD}", f"start {OLD}"]


def test_a_model_that_does_not_fit_is_refused_before_anything_is_unloaded(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    fakesys.write(root, "proc/meminfo", fakesys.meminfo(total_mb=512, available_mb=64))
    harness = Harness(tmp_path, root)
    harness.slot.start(OLD, harness.files[OLD])
    harness.files[NEW].write_bytes(b"GGUF")
    with open(harness.files[NEW], "r+b") as f:
        f.truncate(400 * MIB)  # sparse: 400 MiB on paper
    with pytest.raises(SwapError, match="does not fit: it needs") as err:
        harness.slot.want(NEW, 10)
    assert err.value.status == 503
    assert harness.log == [f"start {OLD}"] and harness.slot.info is not None


def test_swap_shortfall_counts_what_the_current_model_frees() -> None:
    size, kv = 300 * MIB, 10_000
    assert swap_shortfall(size, kv, None, 0, 0) is None, "unknown memory never refuses"
    need = size + 64 * MIB + kv * 2048
    assert swap_shortfall(size, kv, need, 0, 0) is None
    assert swap_shortfall(size, kv, need - MIB, 0, 0) is not None
    assert swap_shortfall(size, kv, need - MIB, 2 * MIB, 0) is None
    why = swap_shortfall(size, kv, need, 0, 200 * MIB)
    assert why is not None and "the board keeps 200 MiB" in why


@pytest.mark.parametrize(
    ("payload", "parsed"),
    [
        (b"gemma3-270m", ("load", "gemma3-270m")),
        (b" gemma3-270m:latest\n", ("load", "gemma3-270m")),
        (b'{"load": "qwen3-0.6b"}', ("load", "qwen3-0.6b")),
        (b'{"unload": true}', ("unload", None)),
    ],
)
def test_the_model_command_payloads(payload: bytes, parsed: tuple[str, str | None]) -> None:
    assert parse(payload) == parsed


@pytest.mark.parametrize(
    "payload", [b"", b"  ", b"{", b'{"unload": 1}', b'{"load": ""}', b"[1]", b'{"x": 1}']
)
def test_bad_model_commands_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        parse(payload)


def test_the_status_reports_what_edgellm_bench_measured(
    h: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert "bench" not in h.slot.details()
    result = {
        "decode_tps": {"1": 120.5, "2": 159.84},
        "prompt_tps": {"short": 412.7, "ha": 269.81},
        "ttft_s": {"cold_ha": 17.0, "warm_ha": 0.62},
    }
    devbench.store(OLD, result)
    details = h.slot.details()
    assert details["model"] == OLD and details["model_state"] == "loaded"
    assert details["bench"] == {
        "prompt_tps": 269.8,
        "decode_tps": 159.8,
        "ttft_cold_s": 17.0,
        "ttft_warm_s": 0.62,
    }
    devbench.store(OLD, {"decode_tps": "garbled"})
    assert "bench" not in h.slot.details()
