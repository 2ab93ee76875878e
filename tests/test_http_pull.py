"""POST /api/pull and GET /api/tags: the unmodified ollama client against a real daemon whose
HF_ENDPOINT is a fake hub on loopback (tests/fakehub.py), and the pieces that need no daemon."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from daemon.catalog import CATALOG, HubSource, ModelError
from daemon.downloads import BLOCK_SIZE
from daemon.frontends.http_common import HttpError
from daemon.frontends.http_pull import FINAL_STATUSES, catalog_name, gguf_strings, status_of
from tests import fakehub
from tests.fakehub import FakeHub, HubFile, fake_gguf, sha256
from tests.helpers import LOOPBACK, Broker, Daemon, poll

MODEL = "smollm2-135m"  # the loaded one
HUB_MODEL = "smollm2-360m"  # unpinned: any GGUF bytes whose digest the fake hub publishes pass
PINNED = "qwen2.5-0.5b"  # pinned: bytes with another digest are refused before their body
ABSENT = "qwen3-0.6b"  # the fake hub has no such file
SIZE = 2 * BLOCK_SIZE + 12_345
STALL_AFTER = BLOCK_SIZE + 4096  # past the first block: one progress report, then the wait
WAIT_S = 120.0


# --- no daemon needed ---


@pytest.mark.parametrize(
    ("raw", "name"),
    [(HUB_MODEL, HUB_MODEL), (f"{HUB_MODEL}:latest", HUB_MODEL), (" gemma3-1b ", "gemma3-1b")],
)
def test_ollama_names_become_catalog_names(raw: str, name: str) -> None:
    assert catalog_name(raw) == name


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (None, 400),
        ("", 400),
        (5, 400),
        (f"{HUB_MODEL}:q8_0", 404),
        ("llama3.2", 404),
        ("https://example.com/x.gguf", 404),
        ("hf:owner/repo/x.gguf", 404),
        ("/etc/passwd", 404),
    ],
)
def test_only_catalog_names_are_pulled(raw: Any, status: int) -> None:
    with pytest.raises(HttpError) as err:
        catalog_name(raw)
    assert err.value.status == status
    if status == 404:
        assert HUB_MODEL in err.value.message and MODEL in err.value.message


def test_a_full_disk_is_a_507_and_other_failures_a_500() -> None:
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert status_of(ModelError("not enough free disk in /m: 1.0 MiB still to fetch")) == 507
    assert status_of(ModelError(f"cannot write /m/x.gguf.part: {enospc}")) == 507
    assert status_of(ModelError("download of http://h/x failed: HTTP 404 Not Found")) == 500


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _gguf(*kvs: bytes) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)


def test_gguf_strings_reads_the_general_keys_and_never_raises(tmp_path: Path) -> None:
    arch = _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("llama")
    count = _gguf_string("general.file_type") + struct.pack("<II", 4, 7)
    tags = _gguf_string("general.tags") + struct.pack("<IIQ", 9, 8, 2)
    tags += _gguf_string("a") + _gguf_string("b")
    label = _gguf_string("general.size_label") + struct.pack("<I", 8) + _gguf_string("360M")
    wanted = {"general.architecture", "general.size_label"}
    path = tmp_path / "m.gguf"
    path.write_bytes(_gguf(arch, count, tags, label))
    assert gguf_strings(path, wanted) == {
        "general.architecture": "llama",
        "general.size_label": "360M",
    }
    path.write_bytes(_gguf(arch, count, tags, label)[:-3])  # cut short: what came before stays
    assert gguf_strings(path, wanted) == {"general.architecture": "llama"}
    path.write_bytes(fake_gguf(4096, seed=1))
    assert gguf_strings(path, wanted) == {}
    assert gguf_strings(tmp_path / "absent.gguf", wanted) == {}


# --- a daemon whose hub is the fake one ---


def hub_file(fake: FakeHub, name: str, data: bytes, **kwargs: Any) -> HubFile:
    """Serve data as the catalog entry name's file on the fake hub."""
    source = CATALOG[name].source
    assert isinstance(source, HubSource)
    f = HubFile(data, repo=source.repo, revision=source.revision, **kwargs)
    fake.files[source.file] = f
    return f


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeHub]:
    with fakehub.serving(FakeHub()) as state:
        yield state


@pytest.fixture(scope="module")
def models_dir(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir of the module's own holding the default model."""
    return with_default_model(tmp_path_factory.mktemp("models"), model_path)


def with_default_model(directory: Path, model_path: Path) -> Path:
    """directory with the default model linked in, and its record (no hashing at start)."""
    (directory / model_path.name).symlink_to(model_path)
    record = model_path.with_name(model_path.name + ".verified.json")
    if record.exists():
        shutil.copy(record, directory / record.name)
    return directory


def start_node(
    broker: Broker, workdir: Path, fake: FakeHub, models_dir: Path, **http: Any
) -> Daemon:
    """A daemon on the default model whose hub is the fake one (HF_ENDPOINT in its environment)."""
    settings: dict[str, Any] = {
        "model": {"dir": str(models_dir)},
        # No thread sweep: nothing but these tests' own requests loads the CPU.
        "governor": {"thread_sweep": False},
    }
    if http:
        settings["http"] = http
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_ENDPOINT", fake.endpoint)
        for var in ("http_proxy", "https_proxy", "all_proxy", "HF_TOKEN"):
            env.delenv(var, raising=False)
            env.delenv(var.upper(), raising=False)
        return Daemon(broker, workdir, settings=settings).start()


@pytest.fixture(scope="module")
def node(
    broker: Broker, fake: FakeHub, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    d = start_node(broker, tmp_path_factory.mktemp("pull"), fake, models_dir)
    yield d
    d.stop()


@pytest.fixture
def hub(fake: FakeHub, models_dir: Path) -> Iterator[FakeHub]:
    """The fake hub with nothing published, and the models dir back to the default model only."""
    fake.files.clear()
    fake.seen.clear()
    for path in models_dir.iterdir():
        if not path.name.startswith("SmolLM2-135M"):
            path.unlink()
    yield fake
    for f in fake.files.values():
        if f.gate is not None:
            f.gate.set()  # never leave a CDN thread waiting


def api(d: Daemon) -> ollama.Client:
    return ollama.Client(host=f"http://{LOOPBACK}:{d.http_port}", timeout=WAIT_S)


def leftovers(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir() if not p.name.startswith("SmolLM2-135M"))


def tag_names(d: Daemon) -> list[str]:
    return [m.model or "" for m in api(d).list().models]


def pull_events(d: Daemon, event: str) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") == event]


def test_an_unknown_name_is_a_404_naming_the_catalog(node: Daemon, hub: FakeHub) -> None:
    for name in ("llama3.2", "https://example.com/x.gguf"):
        with pytest.raises(ollama.ResponseError) as err:
            api(node).pull(name)
        assert err.value.status_code == 404 and HUB_MODEL in err.value.error
        with pytest.raises(ollama.ResponseError) as err:
            list(api(node).pull(name, stream=True))
        assert err.value.status_code == 404
    assert hub.seen == []


def test_the_loaded_model_pulls_at_once(node: Daemon, hub: FakeHub) -> None:
    assert api(node).pull(MODEL).status == "success"
    parts = list(api(node).pull(f"{MODEL}:latest", stream=True))
    statuses = [p.status for p in parts]
    assert len(parts) == 5 and statuses[0] == "pulling manifest"
    assert statuses[-3:] == list(FINAL_STATUSES)
    line = parts[1]
    assert line.digest and line.status == f"pulling {line.digest.removeprefix('sha256:')[:12]}"
    assert line.total and line.completed == line.total > 1_000_000
    assert hub.seen == []


def test_hub_failures_are_errors_and_leave_no_file(
    node: Daemon, hub: FakeHub, models_dir: Path
) -> None:
    c = api(node)
    with pytest.raises(ollama.ResponseError, match=r"HTTP 404.*not found") as err:
        list(c.pull(ABSENT, stream=True))
    assert err.value.status_code == -1, "an error line in the stream (its status was 200)"
    with pytest.raises(ollama.ResponseError, match=r"HTTP 404") as err:
        c.pull(ABSENT)
    assert err.value.status_code == 500
    hub_file(hub, PINNED, fake_gguf(SIZE, seed=2))
    with pytest.raises(ollama.ResponseError, match=r"is pinned; refusing to fetch"):
        list(c.pull(PINNED, stream=True))
    assert hub.requests("cdn", "GET") == [], "refused before the body"
    liar = hub_file(hub, HUB_MODEL, fake_gguf(SIZE, seed=3), etag="e" * 64)
    with pytest.raises(ollama.ResponseError, match=rf"has sha256 {sha256(liar.data)}, expected e+"):
        c.pull(HUB_MODEL, stream=False)
    assert liar.gets == 1
    assert leftovers(models_dir) == []
    assert tag_names(node) == [f"{MODEL}:latest"]


def test_a_pull_streams_progress_while_the_model_keeps_serving(
    node: Daemon, hub: FakeHub, models_dir: Path
) -> None:
    gate = threading.Event()
    f = hub_file(hub, HUB_MODEL, fake_gguf(SIZE, seed=4), gate=gate, stall_after=STALL_AFTER)
    c = api(node)
    stream = c.pull(f"{HUB_MODEL}:latest", stream=True)
    parts = [next(stream)]
    while not (parts[-1].completed and parts[-1].total):
        parts.append(next(stream))
    # The download waits on the fake CDN now, part way through.
    assert 0 < (parts[-1].completed or 0) < SIZE == parts[-1].total
    reply = c.chat(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4}
    )
    assert reply.done and (reply.eval_count or 0) >= 1
    with pytest.raises(ollama.ResponseError, match=rf"'{HUB_MODEL}' is being pulled") as err:
        c.pull(PINNED)
    assert err.value.status_code == 409
    # A second pull of the same model follows the same download.
    second = api(node).pull(HUB_MODEL, stream=True)
    assert next(second).status == "pulling manifest"
    joined = next(second)
    assert 0 < (joined.completed or 0) < SIZE
    gate.set()
    parts += list(stream)
    assert [p.status for p in list(second)][-1] == "success"
    statuses = [p.status for p in parts]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == list(FINAL_STATUSES)
    progress = [p for p in parts if p.completed is not None]
    assert all(p.total == SIZE and p.digest == "" for p in progress)
    completed = [p.completed for p in progress]
    assert completed == sorted(completed) and completed[-1] == SIZE
    assert f.gets == 1, "one download for both pulls"
    path = models_dir / CATALOG[HUB_MODEL].filename
    assert path.read_bytes() == f.data
    record = json.loads(path.with_name(path.name + ".verified.json").read_text())
    assert record["sha256"] == sha256(f.data)
    assert leftovers(models_dir) == sorted([path.name, path.name + ".verified.json"])


def test_a_pulled_model_is_listed_and_pulls_again_at_once(node: Daemon, hub: FakeHub) -> None:
    before = api(node).list().models
    f = hub_file(hub, HUB_MODEL, fake_gguf(SIZE, seed=5))
    assert api(node).pull(HUB_MODEL).status == "success"
    listed = api(node).list().models
    assert [m.model for m in listed] == [f"{MODEL}:latest", f"{HUB_MODEL}:latest"]
    assert listed[0] == before[0], "the loaded model's entry is as it was"
    entry = listed[1]
    assert entry.size == SIZE and entry.digest and entry.modified_at is not None
    assert entry.details is not None and entry.details.format == "gguf"
    assert (entry.details.parameter_size, entry.details.quantization_level) == ("360M", "Q8_0")
    seen = len(hub.seen)
    assert [p.status for p in api(node).pull(HUB_MODEL, stream=True)][-1] == "success"
    assert api(node).pull(f"{HUB_MODEL}:latest").status == "success"
    assert len(hub.seen) == seen and f.gets == 1
    # Naming it loads it (docs/MODELS.md, Swapping): these bytes are no model, so the load
    # fails, the model that served before serves again, and the error says why.
    with pytest.raises(ollama.ResponseError, match=f"cannot load model '{HUB_MODEL}'") as err:
        api(node).chat(model=HUB_MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 500
    assert [m.model for m in api(node).ps().models] == [f"{MODEL}:latest"]


def test_a_pull_whose_client_left_stops_and_the_next_resumes(
    node: Daemon, hub: FakeHub, models_dir: Path
) -> None:
    gate = threading.Event()
    f = hub_file(hub, HUB_MODEL, fake_gguf(SIZE, seed=6), gate=gate, stall_after=STALL_AFTER)
    left = len([e for e in pull_events(node, "http_pull_request") if e["outcome"] == "client_gone"])
    url = f"http://{LOOPBACK}:{node.http_port}/api/pull"
    with httpx.stream("POST", url, json={"name": HUB_MODEL}, timeout=WAIT_S) as response:
        for line in response.iter_lines():
            if json.loads(line).get("completed"):
                break  # part way through, then hang up
    poll(
        lambda: (
            len(
                [e for e in pull_events(node, "http_pull_request") if e["outcome"] == "client_gone"]
            )
            > left
        ),
        WAIT_S,
        "the daemon seeing its client leave",
    )
    gate.set()  # the next block arrives, and the download finds no one following it
    failed = poll(
        lambda: [
            e for e in pull_events(node, "http_pull_failed") if "every client left" in e["error"]
        ],
        WAIT_S,
        "the pull stopping",
    )
    assert "resumes" in failed[-1]["error"]
    part = models_dir / (CATALOG[HUB_MODEL].filename + ".part")
    assert leftovers(models_dir) == [part.name]
    kept = part.stat().st_size
    assert api(node).pull(HUB_MODEL).status == "success"
    assert hub.requests("cdn", "GET")[-1].range == f"bytes={kept}-"
    assert (models_dir / CATALOG[HUB_MODEL].filename).read_bytes() == f.data


def test_pulls_can_be_switched_off(
    broker: Broker, fake: FakeHub, hub: FakeHub, tmp_path: Path, model_path: Path
) -> None:
    (tmp_path / "models").mkdir()
    models_dir = with_default_model(tmp_path / "models", model_path)
    hub_file(hub, HUB_MODEL, fake_gguf(SIZE, seed=7))
    d = start_node(broker, tmp_path, fake, models_dir, allow_pull=False)
    try:
        with pytest.raises(ollama.ResponseError, match=r"http\.allow_pull: false") as err:
            api(d).pull(HUB_MODEL)
        assert err.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as err:
            list(api(d).pull(HUB_MODEL, stream=True))
        assert err.value.status_code == 403
        assert api(d).pull(MODEL).status == "success", "nothing to download"
    finally:
        d.stop()
    assert hub.seen == []
    assert sorted(p.name for p in models_dir.iterdir() if p.suffix == ".gguf") == [model_path.name]
