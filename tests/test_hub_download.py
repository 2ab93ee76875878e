"""Hub downloads against a fake Hugging Face hub on loopback: the published digest checked and
pinned, gated and missing files, resume after a dropped connection, and the free-disk check."""

from __future__ import annotations

import json
import os
import re
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import downloads, hub, models
from daemon.catalog import CatalogEntry, HubSource, ModelError
from tests import fakehub
from tests.fakehub import (
    COMMIT,
    DROP_AFTER,
    REPO,
    SIZE,
    FakeHub,
    HubFile,
    fake_gguf,
    sha256,
)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake hub and its CDN on two free loopback ports; HF_ENDPOINT points at the hub."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setattr(downloads, "RETRY_DELAYS_S", (0.0, 0.0))
    with fakehub.serving(FakeHub()) as state:
        monkeypatch.setenv("HF_ENDPOINT", state.endpoint)
        yield state


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def sidecar(path: Path) -> dict[str, object]:
    return json.loads(path.with_name(path.name + ".verified.json").read_text())


def forbid_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path) -> str:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(models, "_sha256_file", refuse)


def add(fake: FakeHub, name: str, seed: int, size: int = SIZE, **kwargs: object) -> HubFile:
    f = HubFile(fake_gguf(size, seed), **kwargs)  # type: ignore[arg-type]
    fake.files[name] = f
    return f


def spec(name: str, revision: str = "") -> str:
    return f"hf:{REPO}/{name}" + (f"@{revision}" if revision else "")


# --- the published digest ---


def test_hf_spec_is_checked_against_the_published_digest_and_pinned(
    fake: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = add(fake, "tiny.gguf", seed=1)
    progress: list[tuple[int, int | None]] = []
    path = models.fetch(
        spec("tiny.gguf"), tmp_path, progress=False, on_progress=lambda *a: progress.append(a)
    )
    assert path == tmp_path / "tiny.gguf"
    assert path.read_bytes() == f.data
    assert sidecar(path)["sha256"] == sha256(f.data)
    assert leftovers(tmp_path) == ["tiny.gguf", "tiny.gguf.verified.json"]
    # One HEAD on the resolve URL, not followed: X-Linked-Size made a second HEAD needless.
    assert [s.path for s in fake.requests("hub", "HEAD")] == [f"/{REPO}/resolve/main/tiny.gguf"]
    assert fake.requests("cdn", "HEAD") == []
    assert [s.range for s in fake.requests("cdn", "GET")] == [None]
    assert progress[0] == (0, SIZE) and progress[-1] == (SIZE, SIZE)
    forbid_hashing(monkeypatch)
    assert models.locate(spec("tiny.gguf"), tmp_path) == path
    assert models.fetch(spec("tiny.gguf"), tmp_path, progress=False) == path
    assert f.gets == 1


def test_bytes_not_matching_the_published_digest_are_refused(fake: FakeHub, tmp_path: Path) -> None:
    f = add(fake, "liar.gguf", seed=2, etag="e" * 64)
    message = rf"has sha256 {sha256(f.data)}, expected {'e' * 64} \(published by the hub\)"
    with pytest.raises(ModelError, match=message):
        models.fetch(spec("liar.gguf"), tmp_path, progress=False)
    assert leftovers(tmp_path) == []


def test_a_pin_the_hub_disagrees_with_is_refused_before_the_body(
    fake: FakeHub, tmp_path: Path
) -> None:
    add(fake, "tiny.gguf", seed=1)
    with pytest.raises(
        ModelError, match=r"published with sha256 [0-9a-f]{64}, but 7{64} is pinned"
    ):
        models.fetch(spec("tiny.gguf") + "#sha256=" + "7" * 64, tmp_path, progress=False)
    assert fake.requests("cdn", "GET") == []
    assert leftovers(tmp_path) == []


def test_the_token_goes_to_the_hub_and_not_to_the_cdn(
    fake: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(fake, "tiny.gguf", seed=1)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    models.fetch(spec("tiny.gguf"), tmp_path, progress=False)
    hub_seen = fake.requests("hub", "HEAD") + fake.requests("hub", "GET")
    assert len(hub_seen) == 2
    assert {s.authorization for s in hub_seen} == {"Bearer hf_secret"}
    assert all(s.authorization is None for s in fake.seen if s.role == "cdn")


# --- gated and missing ---


def test_a_gated_repo_names_the_token(fake: FakeHub, tmp_path: Path) -> None:
    add(fake, "tiny.gguf", seed=1)
    fake.gated.add(REPO)
    page = re.escape(f"{fake.endpoint}/{REPO}")
    with pytest.raises(ModelError, match=rf"HTTP 401.*gated or private.*{page} and set HF_TOKEN"):
        models.fetch(spec("tiny.gguf"), tmp_path, progress=False)
    assert [s.method for s in fake.seen] == ["HEAD"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "revision"), [("absent.gguf", ""), ("tiny.gguf", "v9"), ("tiny.gguf", COMMIT)]
)
def test_a_missing_file_or_revision_is_not_found(
    fake: FakeHub, tmp_path: Path, name: str, revision: str
) -> None:
    add(fake, "tiny.gguf", seed=1)
    with pytest.raises(ModelError, match=r"HTTP 404.*not found \(repo, file or revision\)"):
        models.fetch(spec(name, revision), tmp_path, progress=False)
    assert [s.method for s in fake.seen] == ["HEAD"]
    assert leftovers(tmp_path) == []


# --- resume ---


def test_a_dropped_connection_is_resumed_with_a_range(fake: FakeHub, tmp_path: Path) -> None:
    f = add(fake, "drop.gguf", seed=3, drops=1)
    progress: list[tuple[int, int | None]] = []
    path = models.fetch(
        spec("drop.gguf"), tmp_path, progress=False, on_progress=lambda *a: progress.append(a)
    )
    assert [s.range for s in fake.requests("cdn", "GET")] == [None, f"bytes={DROP_AFTER}-"]
    assert path.read_bytes() == f.data
    assert sidecar(path)["sha256"] == sha256(f.data)
    assert leftovers(tmp_path) == ["drop.gguf", "drop.gguf.verified.json"]
    # The second try reports from where the first stopped.
    assert (DROP_AFTER, SIZE) in progress and progress[-1] == (SIZE, SIZE)


def test_a_download_out_of_tries_keeps_its_part_for_the_next_fetch(
    fake: FakeHub, tmp_path: Path
) -> None:
    f = add(fake, "drop.gguf", seed=3, drops=3)
    with pytest.raises(downloads.PartKept, match=r"after 3 tries: incomplete download.*kept in"):
        models.fetch(spec("drop.gguf"), tmp_path, progress=False)
    # Each try added DROP_AFTER bytes; the model's own name never holds a partial file.
    assert leftovers(tmp_path) == ["drop.gguf.part"]
    assert (tmp_path / "drop.gguf.part").read_bytes() == f.data[: 3 * DROP_AFTER]
    path = models.fetch(spec("drop.gguf"), tmp_path, progress=False)
    assert fake.requests("cdn", "GET")[-1].range == f"bytes={3 * DROP_AFTER}-"
    assert path.read_bytes() == f.data
    assert leftovers(tmp_path) == ["drop.gguf", "drop.gguf.verified.json"]


def test_ctrl_c_keeps_the_part_for_the_next_fetch(fake: FakeHub, tmp_path: Path) -> None:
    # Larger than one block, so that the interrupt lands between two.
    f = add(fake, "big.gguf", seed=7, size=3 * downloads.BLOCK_SIZE)
    calls: list[int] = []

    def interrupt(completed: int, total: int | None) -> None:
        calls.append(completed)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models.fetch(spec("big.gguf"), tmp_path, progress=False, on_progress=interrupt)
    assert leftovers(tmp_path) == ["big.gguf.part"]
    kept = (tmp_path / "big.gguf.part").stat().st_size
    assert 0 < kept < len(f.data)
    path = models.fetch(spec("big.gguf"), tmp_path, progress=False)
    assert fake.requests("cdn", "GET")[-1].range == f"bytes={kept}-"
    assert path.read_bytes() == f.data


def test_a_server_ignoring_the_range_starts_the_file_over(fake: FakeHub, tmp_path: Path) -> None:
    f = add(fake, "norange.gguf", seed=4, ranges=False)
    (tmp_path / "norange.gguf.part").write_bytes(b"stale" * 1000)
    path = models.fetch(spec("norange.gguf"), tmp_path, progress=False)
    assert [s.range for s in fake.requests("cdn", "GET")] == ["bytes=5000-"]
    assert path.read_bytes() == f.data


def test_a_part_longer_than_the_file_starts_over(fake: FakeHub, tmp_path: Path) -> None:
    f = add(fake, "tiny.gguf", seed=1)
    (tmp_path / "tiny.gguf.part").write_bytes(b"x" * (SIZE + 100))
    path = models.fetch(spec("tiny.gguf"), tmp_path, progress=False)
    assert [s.range for s in fake.requests("cdn", "GET")] == [None]
    assert path.read_bytes() == f.data


def test_without_head_a_range_past_the_end_starts_over(fake: FakeHub, tmp_path: Path) -> None:
    f = add(fake, "nohead.gguf", seed=5, head=False)
    (tmp_path / "nohead.gguf.part").write_bytes(b"x" * (SIZE + 10))
    path = models.fetch(fake.cdn_url("nohead.gguf"), tmp_path, progress=False)
    cdn = [(s.method, s.range) for s in fake.seen]
    assert cdn == [("HEAD", None), ("GET", f"bytes={SIZE + 10}-"), ("GET", None)]
    assert path.read_bytes() == f.data


# --- free disk ---


def disk_with_free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    usage = types.SimpleNamespace(total=1 << 40, used=(1 << 40) - free, free=free)
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda path: usage)


def test_a_full_disk_is_refused_before_any_get(
    fake: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(fake, "tiny.gguf", seed=1)
    disk_with_free(monkeypatch, downloads.FREE_MARGIN_BYTES + SIZE - 1)
    with pytest.raises(ModelError, match=r"needs 64\.3 MiB, and 64\.3 MiB is free"):
        models.fetch(spec("tiny.gguf"), tmp_path, progress=False)
    assert fake.requests("cdn", "GET") == []
    assert leftovers(tmp_path) == []
    disk_with_free(monkeypatch, downloads.FREE_MARGIN_BYTES + SIZE)
    assert models.fetch(spec("tiny.gguf"), tmp_path, progress=False).is_file()


def test_the_disk_check_counts_the_bytes_already_fetched(
    fake: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = add(fake, "tiny.gguf", seed=1)
    have = 100_000
    (tmp_path / "tiny.gguf.part").write_bytes(f.data[:have])
    disk_with_free(monkeypatch, downloads.FREE_MARGIN_BYTES + SIZE - have - 1)
    with pytest.raises(downloads.PartKept, match=r"0\.2 MiB still to fetch"):
        models.fetch(spec("tiny.gguf"), tmp_path, progress=False)
    assert leftovers(tmp_path) == ["tiny.gguf.part"]
    disk_with_free(monkeypatch, downloads.FREE_MARGIN_BYTES + SIZE - have)
    path = models.fetch(spec("tiny.gguf"), tmp_path, progress=False)
    assert [s.range for s in fake.requests("cdn", "GET")] == [f"bytes={have}-"]
    assert path.read_bytes() == f.data


# --- a catalog entry from the hub ---


@pytest.fixture
def hub_entry(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> CatalogEntry:
    entry = CatalogEntry(
        name="hub-tiny",
        description="a fake hub model",
        filename="hub-tiny.Q4_0.gguf",
        sha256=None,
        size=None,
        chat=True,
        source=HubSource(REPO, "hub-tiny.Q4_0.gguf", revision=COMMIT),
    )
    monkeypatch.setitem(models.CATALOG, entry.name, entry)
    add(fake, entry.filename, seed=6, revision=COMMIT)
    return entry


def test_a_hub_entry_is_fetched_from_the_endpoint_and_pinned(
    fake: FakeHub, hub_entry: CatalogEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = models.resolve("hub-tiny", tmp_path)
    assert ref.url == f"{fake.endpoint}/{REPO}/resolve/{COMMIT}/hub-tiny.Q4_0.gguf"
    assert hub.endpoint() == fake.endpoint
    assert dict(models.installed(tmp_path))["hub-tiny"] is None
    path = models.fetch("hub-tiny", tmp_path, progress=False)
    data = fake.files[hub_entry.filename].data
    assert path.read_bytes() == data
    assert sidecar(path)["sha256"] == sha256(data)
    assert dict(models.installed(tmp_path))["hub-tiny"] == path
    with monkeypatch.context() as m:
        forbid_hashing(m)
        assert models.locate("hub-tiny", tmp_path) == path
    # The pinned digest holds later damage to account.
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ModelError, match=r"corrupt or modified.*edgellm model fetch hub-tiny"):
        models.locate("hub-tiny", tmp_path)


def test_a_hub_entry_without_its_record_is_unverified(
    hub_entry: CatalogEntry, tmp_path: Path
) -> None:
    path = tmp_path / hub_entry.filename
    path.write_bytes(fake_gguf(SIZE, seed=6))
    with pytest.raises(ModelError, match=r"is unverified; run `edgellm model fetch hub-tiny`"):
        models.locate("hub-tiny", tmp_path)
    assert dict(models.installed(tmp_path))["hub-tiny"] is None
