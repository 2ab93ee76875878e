"""ollama's model management on this node: POST /api/pull downloads a catalog model into
model.dir on a thread of its own (never the engine's: the loaded model keeps serving), and
GET /api/tags lists what is installed (docs/HTTP.md, Pulling models).

One pull at a time: a pull of the model already being pulled follows that download, a pull of
another model meanwhile is a 409. A download whose every client has left stops at its next
block, its .part kept for the next pull to resume (as ollama stops one whose client left).
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from daemon import models
from daemon.catalog import CATALOG, Facts, ModelError
from daemon.downloads import PartKept
from daemon.frontends.http_common import HttpError, ModelCard, encode, stand_in_digest
from daemon.frontends.http_ollama import NDJSON, stream_of
from daemon.frontends.http_server import Handler

log = structlog.get_logger(__name__)

# Progress lines at most this often (~4 a second), plus the last; also how often a waiting
# handler looks whether its client has left.
PROGRESS_EVERY_S = 0.25
RUNNING, DONE, FAILED = "running", "done", "failed"
# The statuses ollama sends after a download's bytes; edgellm checks the digest as they arrive
# and installs the file (rename and sidecar) before the first of these.
FINAL_STATUSES = ("verifying sha256 digest", "writing manifest", "success")


class PullCancelled(PartKept):
    """Every client of a pull left, or the node is stopping: the .part stays to be resumed."""


@dataclass
class PullJob:
    """One download and what its followers see of it; guarded by the Puller's condition."""

    name: str
    digest: str  # "sha256:<hex>" when the catalog pins it; "" until the hub's is recorded
    total: int | None
    completed: int = 0
    state: str = RUNNING
    error: str = ""
    status: int = 500  # the HTTP status of error, for a client not streaming
    followers: int = 0

    def progress(self, completed: int, total: int | None) -> dict[str, Any]:
        label = self.digest.removeprefix("sha256:")[:12] or self.name
        line: dict[str, Any] = {"status": f"pulling {label}", "digest": self.digest}
        if total is not None:
            line["total"] = total
        line["completed"] = completed
        return line


class Puller:
    """The node's pulls: names checked against the catalog, one download at a time."""

    def __init__(self, models_dir: Path | None, allowed: bool):
        self._dir = models_dir
        self._allowed = allowed
        self._cond = threading.Condition()
        self._job: PullJob | None = None
        self._stopping = False

    def serve(self, h: Handler, body: dict[str, Any], card: ModelCard) -> None:
        """Answer one POST /api/pull: at once when installed, else by following a download."""
        raw = body.get("model") or body.get("name")
        stream = stream_of(body)
        installed = self._installed(raw, card)
        if installed is not None:
            job = PullJob(str(raw), installed[0], installed[1], installed[1] or 0, DONE)
            self._answer(h, job, stream)
            return
        if not self._allowed:
            raise HttpError(
                403,
                "pulling models over HTTP is off on this node (http.allow_pull: false);"
                " install with `edgellm model fetch` on the node",
                "policy",
            )
        job = self._join(catalog_name(raw))
        outcome = FAILED  # unless _answer says otherwise (a failed job raises its HttpError)
        try:
            outcome = self._answer(h, job, stream)
        finally:
            with self._cond:
                job.followers -= 1
            log.info(
                "http_pull_request", model=job.name, client=h.client_address[0], outcome=outcome
            )

    def stop(self) -> None:
        """Stop a running download at its next block (the node is shutting down)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _installed(self, raw: Any, card: ModelCard) -> tuple[str, int | None] | None:
        """(digest, size) of the loaded model or an installed catalog one; None otherwise."""
        if card.matches(raw):
            return f"sha256:{card.digest}", card.info.size_bytes
        name = catalog_name(raw)
        path = dict(models.installed(self._dir)).get(name)
        if path is None:
            return None
        pinned = CATALOG[name].sha256
        try:
            return (f"sha256:{pinned}" if pinned else ""), path.stat().st_size
        except OSError:
            return None

    def _join(self, name: str) -> PullJob:
        """The running pull of name, or a new one; a 409 while another model is pulled."""
        with self._cond:
            job = self._job
            if job is not None and job.name != name:
                raise HttpError(
                    409, f"'{job.name}' is being pulled; pull one model at a time", "busy"
                )
            if job is None:
                entry = CATALOG[name]
                job = PullJob(name, f"sha256:{entry.sha256}" if entry.sha256 else "", entry.size)
                self._job = job
                threading.Thread(target=self._run, args=(job,), name="pull", daemon=True).start()
            job.followers += 1
            return job

    def _run(self, job: PullJob) -> None:
        """The download thread: fetch, then say how it ended and free the slot."""
        started = time.monotonic()
        log.info("http_pull_start", model=job.name)
        outcome: tuple[str, str, int] = (DONE, "", 200)
        size = 0
        try:
            path = models.fetch(
                job.name, self._dir, progress=False, on_progress=lambda c, t: self._step(job, c, t)
            )
            size = path.stat().st_size
        except PullCancelled as err:
            outcome = (FAILED, str(err), 503)
        except ModelError as err:
            outcome = (FAILED, str(err), status_of(err))
        except Exception:
            log.exception("http_pull_crashed", model=job.name)
            outcome = (FAILED, "internal error; see the daemon's log", 500)
        seconds = round(time.monotonic() - started, 2)
        if outcome[0] == DONE:
            log.info("http_pull_done", model=job.name, size=size, seconds=seconds)
        else:
            log.warning("http_pull_failed", model=job.name, error=outcome[1], seconds=seconds)
        with self._cond:
            job.state, job.error, job.status = outcome
            if job.state == DONE:
                job.completed = job.total = size
            self._job = None
            self._cond.notify_all()

    def _step(self, job: PullJob, completed: int, total: int | None) -> None:
        """A download's progress; stops it (PullCancelled) when no one follows it any more."""
        with self._cond:
            if self._stopping or job.followers <= 0:
                why = "the node is stopping" if self._stopping else "every client left"
                raise PullCancelled(f"pull of '{job.name}' stopped: {why}; a new pull resumes it")
            job.completed, job.total = completed, total
            self._cond.notify_all()

    def _updates(self, job: PullJob) -> Iterator[dict[str, Any] | None]:
        """job's progress lines until it ends, one per PROGRESS_EVERY_S at most (None: no news
        this time), the last one after it ended."""
        last: tuple[int, int | None] | None = None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: job.state != RUNNING, timeout=PROGRESS_EVERY_S)
                now, ended = (job.completed, job.total), job.state != RUNNING
            if now != last and now[1] is not None:
                last = now
                yield job.progress(*now)
            else:
                yield None
            if ended:
                return

    def _answer(self, h: Handler, job: PullJob, stream: bool) -> str:
        """Follow job to its end: NDJSON lines as ollama streams them, or one object. Says how
        it ended: done, failed, or client_gone (the download goes on for other followers)."""
        if not stream:
            for _ in self._updates(job):
                if h.client_gone():
                    h.close_connection = True
                    return "client_gone"
            if job.state != DONE:
                raise HttpError(job.status, job.error, "internal")
            h.send_json(200, {"status": "success"})
            return DONE
        h.start_stream(NDJSON)
        sent = h.write_chunk(encode({"status": "pulling manifest"}) + b"\n")
        for line in self._updates(job) if sent else ():
            gone = h.client_gone() if line is None else not h.write_chunk(encode(line) + b"\n")
            if gone:
                sent = False
                break
        if not sent:
            h.close_connection = True
            return "client_gone"
        if job.state == DONE:
            lines = [{"status": s} for s in FINAL_STATUSES]
        else:
            lines = [{"error": job.error}]  # the status line is gone already
        for line in lines:
            h.write_chunk(encode(line) + b"\n")
        h.end_stream()
        return job.state


def catalog_name(raw: Any) -> str:
    """A catalog name from ollama's `name[:tag]` (only `:latest`); 400 or 404 otherwise."""
    if not isinstance(raw, str) or not raw.strip():
        raise HttpError(400, "model is required")
    name = raw.strip().removesuffix(":latest")
    if name not in CATALOG:
        raise HttpError(
            404,
            f"model '{raw}' is not in edgellm's catalog; pull one of: {', '.join(CATALOG)}",
            "model_not_found",
        )
    return name


def status_of(err: ModelError) -> int:
    """507 for a full disk (checked before the body, or the OS's ENOSPC while writing); 500
    for any other failed download, as ollama answers one."""
    text = str(err)
    if "not enough free disk" in text or os.strerror(errno.ENOSPC) in text:
        return 507
    return 500


# -- GET /api/tags --------------------------------------------------------------------------


def installed_tags(models_dir: Path | None, card: ModelCard) -> list[dict[str, Any]]:
    """ollama's /api/tags entries of the catalog chat models installed (verified by their
    sidecar, cheaply), the loaded one left out: its entry comes from its card. A base model
    (no chat template) is left out too: chat clients pick from this list (Home Assistant's
    form offers it), and every chat request would then be refused; /api/generate still loads it."""
    entries = []
    for name, path in models.installed(models_dir):
        entry = CATALOG.get(name)
        if entry is None or path is None or card.matches(name) or str(path) == card.info.path:
            continue
        if not entry.chat:
            continue
        try:
            st = path.stat()
        except OSError:
            continue  # removed since it was listed
        meta = gguf_strings(path, {"general.architecture", "general.size_label"})
        family = meta.get("general.architecture", "")
        entries.append(
            {
                "name": f"{name}:latest",
                "model": f"{name}:latest",
                "modified_at": datetime.fromtimestamp(st.st_mtime, UTC)
                .isoformat()
                .replace("+00:00", "Z"),
                "size": st.st_size,
                # ModelCard's, so the entry keeps its digest once loaded.
                "digest": stand_in_digest(path, st.st_size, st.st_mtime),
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": family,
                    "families": [family] if family else None,
                    "parameter_size": meta.get("general.size_label") or _params(entry.facts),
                    "quantization_level": entry.facts.quant if entry.facts else "",
                },
            }
        )
    return entries


def _params(facts: Facts | None) -> str:
    """135M, 1.5B ... from the catalog's parameter count (billions)."""
    if facts is None:
        return ""
    if facts.params_b < 1:
        return f"{facts.params_b * 1000:.0f}M"
    return f"{facts.params_b:.1f}".removesuffix(".0") + "B"


# GGUF metadata value types (ggml's gguf.h): fixed-size scalars, a string, an array.
_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
HEAD_BYTES = 64 << 10  # the general.* keys sit at the start; the tokenizer's arrays come later
MAX_KEYS = 256


def gguf_strings(path: Path, wanted: set[str]) -> dict[str, str]:
    """The wanted string keys of a GGUF file's metadata, from its first HEAD_BYTES only; a
    key past them, or a file that is not GGUF v2+, is left out (never an exception)."""
    try:
        with path.open("rb") as f:
            data = f.read(HEAD_BYTES)
    except OSError:
        return {}
    found: dict[str, str] = {}
    try:
        magic, version, _tensors, n_kv = struct.unpack_from("<4sIQQ", data)
        if magic != models.GGUF_MAGIC or version < 2:
            return {}
        pos = 24
        for _ in range(min(n_kv, MAX_KEYS)):
            key, pos = _string(data, pos)
            (kind,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if kind == _STRING:
                value, pos = _string(data, pos)
                if key in wanted:
                    found[key] = value
            elif kind in _SCALARS:
                pos += _SCALARS[kind]
            elif kind == _ARRAY:
                pos = _skip_array(data, pos)
            else:
                break
            if len(found) == len(wanted):
                break
    except (struct.error, UnicodeDecodeError, ValueError):
        pass  # past what was read, or not what GGUF says: keep what was found
    return found


def _string(data: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", data, pos)
    end = pos + 8 + n
    if end > len(data):
        raise ValueError("past the head")
    return data[pos + 8 : end].decode("utf-8"), end


def _skip_array(data: bytes, pos: int) -> int:
    kind, count = struct.unpack_from("<IQ", data, pos)
    pos += 12
    if kind in _SCALARS:
        return pos + _SCALARS[kind] * count
    if kind != _STRING or count > len(data):
        raise ValueError("an array edgellm does not skip")
    for _ in range(count):
        _, pos = _string(data, pos)
    return pos
