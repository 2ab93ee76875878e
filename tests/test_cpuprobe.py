"""Starting on any CPU: the one-time probe, its fallback, the remembered verdict, the refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.engine import cpuprobe
from daemon.engine.cpuprobe import CpuUnsupported, Outcome, VerdictCache


class ScriptedProbe:
    """A probe seam: answers each (repack) call from a script and records the calls."""

    def __init__(self, on: str, off: str = "ok"):
        self.answers = {True: on, False: off}
        self.calls: list[bool] = []

    def __call__(self, _path: Path, repack: bool) -> Outcome:
        self.calls.append(repack)
        detail = self.answers[repack]
        return Outcome(detail == "ok", detail, 0.4)


def never(_path: Path, _repack: bool) -> Outcome:
    raise AssertionError("probed although the verdict was known")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 64)
    return path


@pytest.fixture
def cache(tmp_path: Path) -> VerdictCache:
    return VerdictCache(tmp_path / "state" / cpuprobe.CACHE_NAME)


@pytest.mark.parametrize("setting", ["on", "off"])
def test_an_explicit_setting_is_obeyed_without_probing(setting, model, cache):
    verdict = cpuprobe.decide(setting, model, cache, probe=never)
    assert verdict.repack is (setting == "on")
    assert verdict.source == "config"
    assert not cache.path.exists()


def test_repacking_that_runs_is_kept_and_remembered(model, cache):
    probe = ScriptedProbe(on="ok")
    verdict = cpuprobe.decide("auto", model, cache, probe=probe)
    assert (verdict.repack, verdict.source, probe.calls) == (True, "probe", [True])
    again = cpuprobe.decide("auto", model, cache, probe=never)
    assert (again.repack, again.source) == (True, "cache")


def test_a_signal_death_falls_back_to_no_repacking_and_is_remembered(model, cache):
    probe = ScriptedProbe(on="signal SIGILL", off="ok")
    verdict = cpuprobe.decide("auto", model, cache, probe=probe)
    assert probe.calls == [True, False]
    assert verdict.repack is False and verdict.source == "probe"
    assert verdict.modes == {"on": "signal SIGILL", "off": "ok"}
    stored = json.loads(cache.path.read_text())
    assert [e["repack"] for e in stored.values()] == [False]
    later = cpuprobe.decide("auto", model, cache, probe=never)
    assert later.repack is False and later.source == "cache"
    assert "signal SIGILL" in later.describe()


def test_dying_both_ways_stops_with_the_fix_and_is_remembered(model, cache):
    probe = ScriptedProbe(on="signal SIGILL", off="signal SIGSEGV")
    with pytest.raises(CpuUnsupported, match="The build that fits") as first:
        cpuprobe.decide("auto", model, cache, probe=probe)
    assert "signal SIGSEGV" in str(first.value)
    # A restart (systemd) does not probe again: it stops at once with the same message.
    with pytest.raises(CpuUnsupported, match="The build that fits"):
        cpuprobe.decide("auto", model, cache, probe=never)


def test_an_ordinary_failure_is_not_a_cpu_verdict(model, cache):
    probe = ScriptedProbe(on="exit 1")
    verdict = cpuprobe.decide("auto", model, cache, probe=probe)
    assert verdict.repack is False and verdict.source == "fallback"
    assert probe.calls == [True]
    assert cache.get(cpuprobe.identity(model)) is None  # probed again next time


def test_a_hung_probe_falls_back_but_is_not_remembered(model, cache):
    probe = ScriptedProbe(on="timeout", off="ok")
    verdict = cpuprobe.decide("auto", model, cache, probe=probe)
    assert verdict.repack is False and probe.calls == [True, False]
    assert cache.get(cpuprobe.identity(model)) is None


def test_another_model_or_build_is_probed_afresh(model, cache, tmp_path):
    cpuprobe.decide("auto", model, cache, probe=ScriptedProbe(on="ok"))
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + b"\0" * 128)
    probe = ScriptedProbe(on="signal SIGILL")
    assert cpuprobe.decide("auto", other, cache, probe=probe).repack is False
    assert probe.calls == [True, False]
    assert cpuprobe.identity(model) != cpuprobe.identity(other)


def test_an_unwritable_state_dir_still_gives_a_verdict(model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = VerdictCache(blocker / "sub" / cpuprobe.CACHE_NAME)
    verdict = cpuprobe.decide("auto", model, cache, probe=ScriptedProbe(on="signal SIGILL"))
    assert verdict.repack is False


def test_a_corrupt_verdict_file_counts_as_none(model, cache):
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text("{not json")
    assert cpuprobe.decide("auto", model, cache, probe=ScriptedProbe(on="ok")).repack is True


def test_the_cache_keeps_a_bounded_number_of_verdicts(cache):
    for i in range(40):
        cache.put(f"k{i}", {"repack": True})
    data = json.loads(cache.path.read_text())
    assert len(data) == 16 and "k39" in data and "k0" not in data


def test_state_dir_prefers_systemds_state_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert cpuprobe.state_dir() == tmp_path / "a"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert cpuprobe.state_dir() == tmp_path / "xdg" / "edgellm"


# -- the real child process ---------------------------------------------------------------------


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_probe_reports_a_child_killed_by_a_signal(model):
    out = cpuprobe.run_probe(
        model, True, argv=child("import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    )
    assert out.detail == "signal SIGILL" and out.crashed and not out.ok


def test_run_probe_reports_an_exit_code_and_its_stderr(model):
    out = cpuprobe.run_probe(
        model, True, argv=child("import sys; sys.stderr.write('bad file'); sys.exit(3)")
    )
    assert (out.detail, out.crashed) == ("exit 3", False)
    assert "bad file" in out.stderr_tail


def test_run_probe_reports_a_hang_as_a_timeout(model):
    out = cpuprobe.run_probe(model, True, timeout=0.5, argv=child("import time; time.sleep(30)"))
    assert out.detail == "timeout" and out.crashed


@pytest.mark.model
def test_the_real_probe_decodes_without_repacking(model_path: Path):
    """Without repacking llama.cpp runs on every CPU it runs on at all."""
    out = cpuprobe.run_probe(model_path, repack=False)
    assert out.ok, out.stderr_tail


@pytest.mark.model
def test_the_real_decision_on_this_machine_is_remembered(model_path: Path, tmp_path: Path):
    """Whatever this CPU does with repacked weights, auto ends in a verdict that decodes, and
    the second start does not probe."""
    cache = VerdictCache(tmp_path / cpuprobe.CACHE_NAME)
    verdict = cpuprobe.decide("auto", model_path, cache)
    assert verdict.source == "probe"
    assert verdict.modes.get("on") in ("ok", "signal SIGILL", "signal SIGSEGV", "signal SIGBUS")
    assert verdict.repack is (verdict.modes["on"] == "ok")
    assert cpuprobe.decide("auto", model_path, cache, probe=never).source == "cache"


@pytest.mark.model
def test_doctor_prints_the_verdict(model_path: Path, tmp_path: Path):
    env = {"XDG_STATE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    run = subprocess.run(
        [sys.executable, "-m", "daemon", "doctor"], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    assert "verdict: weight repacking" in run.stdout
    assert str(tmp_path) in run.stdout
    again = subprocess.run(
        [sys.executable, "-m", "daemon", "doctor"], capture_output=True, text=True, env=env
    )
    assert "(cache" in again.stdout
