"""Will this llama.cpp build run on this CPU? A one-time probe in a child process, remembered.

A native llama.cpp build on a CPU that advertises AMX (or other repack targets) repacks the
weights into extra buffers at load; in some VMs the first AMX tile instruction then dies with
SIGILL, which would take the daemon down and, under systemd, into a crash loop. So the first time
a llama-cpp-python build meets a CPU (and a model), a child process loads the model and decodes a
few tokens. If it dies on a signal, repacking is turned off (`use_extra_bufts = False`, what
`llama-server --no-repack` sets) and probed again; if that dies too, the daemon stops with an
error that names what the build needs, what this CPU lacks and the build that fits (cpufit.py).
The verdict is kept in a small JSON file, so later starts cost a few stat calls.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from daemon.engine import cpufit

log = structlog.get_logger(__name__)

CACHE_NAME = "cpu-probe.json"
# Loading a multi-GB model from an SD card is slow; the child's pages stay in the page cache for
# the daemon's own load, so the I/O is paid once.
PROBE_TIMEOUT_S = 300.0
_KEEP = 16  # verdicts remembered (builds x CPUs x models); older ones are dropped

Setting = Literal["auto", "on", "off"]


class CpuUnsupported(Exception):
    """llama.cpp dies on this CPU with and without weight repacking; the message names the fix."""


@dataclass(frozen=True)
class Outcome:
    """How one probe child ended."""

    ok: bool
    detail: str  # "ok", "signal SIGILL", "exit 1", "timeout"
    seconds: float
    stderr_tail: str = ""

    @property
    def crashed(self) -> bool:
        """Died on a signal or hung: a CPU/kernel fault, not an ordinary error."""
        return self.detail.startswith("signal") or self.detail == "timeout"


@dataclass(frozen=True)
class Verdict:
    """Whether to load with weight repacking, and how that was decided."""

    repack: bool
    source: Literal["config", "cache", "probe", "fallback"]
    modes: dict[str, str] = field(default_factory=dict)  # "on"/"off" -> Outcome.detail
    probe_s: float = 0.0
    key: str = ""

    def describe(self) -> str:
        """One line for people: the decision, where it came from, what each probe did."""
        how = [self.source, *(f"repack {m}: {d}" for m, d in self.modes.items())]
        return f"weight repacking {'on' if self.repack else 'off'} ({'; '.join(how)})"


Probe = Callable[[Path, bool], Outcome]


def state_dir() -> Path:
    """Where verdicts are kept: systemd's StateDirectory, else $XDG_STATE_HOME/edgellm."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgellm"


def _cpu_signature(cpu: cpufit.Cpu | None = None) -> str:
    """The CPU's model and features (what decides which kernels llama.cpp runs), and, under
    qemu-user, which CPU it emulates: the host's /proc/cpuinfo looks the same for all of them."""
    return (cpu or cpufit.read_cpu()).key()


def _build_signature() -> str:
    """The installed llama-cpp-python: its version and the native libraries it loads."""
    try:
        ver = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        ver = "?"
    parts = [ver]
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        libdir = Path(spec.origin).parent / "lib"
        with contextlib.suppress(OSError):
            for lib in sorted(libdir.iterdir()):
                st = lib.stat()
                parts.append(f"{lib.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def build_version() -> str:
    """The installed llama-cpp-python's version."""
    return _build_signature().split("|")[0]


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (qemu-user's: the emulated CPU)."""
    cpu = cpufit.read_cpu()
    return cpu.model + (f" (emulated: {cpu.emulated})" if cpu.emulated else "")


def identity(model_path: Path, cpu: cpufit.Cpu | None = None) -> str:
    """A key for (build, CPU, model): a change of any of them means a new probe."""
    st = model_path.stat()
    text = f"{_build_signature()}\n{_cpu_signature(cpu)}\n{model_path.name}:{st.st_size}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class VerdictCache:
    """The remembered verdicts: a small JSON file; unreadable or unwritable means 'none'."""

    def __init__(self, path: Path):
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self._read().get(key)
        return entry if isinstance(entry, dict) and isinstance(entry.get("repack"), bool) else None

    def forget(self, key: str) -> None:
        """Drop key's verdict (doctor --reprobe)."""
        data = self._read()
        if data.pop(key, None) is not None:
            self._write(data)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        data = self._read()
        data.pop(key, None)
        data[key] = entry
        self._write(dict(list(data.items())[-_KEEP:]))

    def _write(self, data: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as err:
            # Not fatal: the next start probes again (about a second).
            log.warning("cpu_probe_not_saved", path=str(self.path), error=err.strerror)


def run_probe(
    model_path: Path,
    repack: bool,
    timeout: float = PROBE_TIMEOUT_S,
    argv: Sequence[str] | None = None,
) -> Outcome:
    """Load the model and decode a few tokens in a child process; report how it ended.

    argv replaces the child's command (a test seam: a child that dies on a signal).
    """
    cmd = (
        list(argv)
        if argv is not None
        else [
            sys.executable,
            "-m",
            "daemon.engine.cpuprobe",
            "--child",
            str(model_path),
            "--repack",
            "on" if repack else "off",
        ]
    )
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-600:].decode("utf-8", "replace")
        return Outcome(False, "timeout", time.monotonic() - t0, tail)
    took = time.monotonic() - t0
    tail = proc.stderr[-600:].decode("utf-8", "replace")
    if proc.returncode == 0:
        return Outcome(True, "ok", took, tail)
    if proc.returncode < 0:
        return Outcome(False, f"signal {signal.Signals(-proc.returncode).name}", took, tail)
    return Outcome(False, f"exit {proc.returncode}", took, tail)


def decide(
    setting: Setting,
    model_path: Path,
    cache: VerdictCache | None = None,
    probe: Probe = run_probe,
) -> Verdict:
    """Repack or not: the config's word, else the remembered verdict, else a probe.

    Raises CpuUnsupported when both ways die on a signal. A probe that fails in an ordinary way
    (a bad file, say) is not about the CPU: nothing is remembered and repacking stays off, so
    the daemon's own load reports the real error.
    """
    if setting != "auto":
        return Verdict(repack=setting == "on", source="config")
    cache = cache or VerdictCache(state_dir() / CACHE_NAME)
    key = identity(model_path)
    entry = cache.get(key)
    if entry is not None:
        if entry.get("unsupported"):
            raise CpuUnsupported(unsupported_text(entry.get("modes", {})))
        return Verdict(entry["repack"], "cache", dict(entry.get("modes", {})), key=key)

    modes: dict[str, str] = {}
    outcomes: list[Outcome] = []

    def attempt(repack: bool) -> Outcome:
        out = probe(model_path, repack)
        modes["on" if repack else "off"] = out.detail
        outcomes.append(out)
        log.info(
            "cpu_probe",
            repack=repack,
            outcome=out.detail,
            seconds=round(out.seconds, 2),
            **({"stderr": out.stderr_tail} if not out.ok else {}),
        )
        return out

    first = attempt(True)
    verdict: Verdict
    if first.ok:
        verdict = Verdict(True, "probe", modes, first.seconds, key)
    elif not first.crashed:
        return Verdict(False, "fallback", modes, first.seconds, key)
    else:
        second = attempt(False)
        took = first.seconds + second.seconds
        if second.ok:
            verdict = Verdict(False, "probe", modes, took, key)
        elif not second.crashed:
            return Verdict(False, "fallback", modes, took, key)
        else:
            if "timeout" not in modes.values():
                cache.put(key, _entry(False, modes, took, unsupported=True))
            raise CpuUnsupported(unsupported_text(modes))
    # A verdict that rests on a timeout may only mean a slow first load: probe again next time.
    if "timeout" not in modes.values():
        cache.put(key, _entry(verdict.repack, modes, verdict.probe_s))
    return verdict


def _entry(repack: bool, modes: dict[str, str], took: float, unsupported: bool = False) -> dict:
    entry: dict[str, Any] = {
        "repack": repack,
        "modes": modes,
        "probe_s": round(took, 2),
        "cpu": cpu_model(),
        "llama_cpp": build_version(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if unsupported:
        entry["unsupported"] = True
    return entry


def unsupported_text(
    modes: dict[str, str], cpu: cpufit.Cpu | None = None, build: cpufit.Build | None = None
) -> str:
    """Why llama.cpp cannot run here and the pinned build that can (cpu, build: test seams)."""
    tried = ", ".join(f"repack {m}: {d}" for m, d in modes.items()) or "an earlier probe"
    return cpufit.explain(
        tried,
        cpu or cpufit.read_cpu(),
        build or cpufit.read_build(),
        sys.executable,
        cpufit.pinned_version(),
    )


def _child(model_path: str, repack: bool) -> int:
    """The probe itself: load, prefill, decode four tokens (where a bad kernel faults)."""
    import faulthandler

    faulthandler.enable()
    from daemon.engine.llama_compat import load_llama

    # One thread for decode and prompt alike: the kernels (and their faults) are the same at
    # any count, and llama.cpp's spinning barrier makes a many-thread step crawl while another
    # process holds a core (seen here during a busy start: 10 s for this probe, 0.4 s alone;
    # with one thread, 0.12 s for the tokens under the same load).
    llm = load_llama(
        model_path,
        repack=repack,
        n_ctx=256,
        n_batch=64,
        n_threads=1,
        n_threads_batch=1,
        verbose=False,
    )
    tokens = llm.tokenize(b"Hello, how are you today?", add_bos=True)
    for i, _ in enumerate(llm.generate(tokens, temp=0.0)):
        if i >= 3:
            break
    llm.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.engine.cpuprobe")
    parser.add_argument("--child", required=True, metavar="MODEL")
    parser.add_argument("--repack", choices=("on", "off"), required=True)
    args = parser.parse_args(argv)
    return _child(args.child, args.repack == "on")


if __name__ == "__main__":
    sys.exit(main())
