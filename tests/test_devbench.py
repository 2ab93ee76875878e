"""`edgellm bench` on the real default model at tiny sizes: what it stores, what it keeps, what
it refuses. No timing asserts: the figures depend on this machine and what else runs on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon import benchreport, benchwatch, cli, devbench, layersplit
from daemon.catalog import DEFAULT_MODEL
from daemon.engine import cpuprobe

TINY = ["--ha-tokens", "96", "--decode-tokens", "4", "--repeats", "1", "--threads", "1"]


def bench(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """Run `edgellm bench --json` at tiny sizes; the result it printed."""
    assert cli.main(["bench", *args, *TINY, "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


@pytest.fixture(scope="module")
def state(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private state directory holding one run's result for the default model."""
    del model_path  # skips the module when the model is not installed
    root = tmp_path_factory.mktemp("bench-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(root))
        mp.delenv("STATE_DIRECTORY", raising=False)
        sizes = devbench.Sizes(ha_tokens=96, decode_tokens=4, repeats=1, threads=1)
        devbench.run(DEFAULT_MODEL, None, sizes)
        yield root / "edgellm"


@pytest.fixture
def private_state(state: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(state.parent))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    return state


def test_a_run_stores_every_field(state: Path):
    data = json.loads((state / devbench.FILE_NAME).read_text())
    assert data["version"] == devbench.VERSION
    r = data["results"][DEFAULT_MODEL]
    assert r["model"] == DEFAULT_MODEL and Path(r["file"]).is_file()
    assert r["size"] == Path(r["file"]).stat().st_size
    assert r["measured_at"].endswith("Z")
    assert r["machine"]["cpu"] and r["machine"]["usable_cores"] >= 1 and r["machine"]["board"]
    assert r["machine"]["llama_cpp_python"] and r["machine"]["prompt_threads"] == 1
    assert r["load"]["repack"] is False and "no stored" in r["load"]["repack_source"]
    assert r["prompt_tps"]["512"] > 0 and r["prompt_tps"]["ha"] > 0
    assert r["ha_prompt_tokens"] == 96
    assert list(r["decode_tps"]) == ["1"] and r["decode_tps"]["1"] > 0
    assert list(r["prefill_sweep_tps"]) == ["1"] and r["prefill_sweep_tps"]["1"] > 0
    assert r["contended_samples"] >= 0 and "prompt_threads" not in r  # it is the machine's
    assert r["best_threads"] == 1
    assert r["ttft_s"]["cold_ha"] > 0 and r["ttft_s"]["warm_ha"] > 0
    assert r["peak_rss_mib"] > 0
    assert set(r["temp_c"]) == {"before", "after", "rise"}  # None where there is no sensor
    if r["temp_c"]["before"] is not None:
        assert r["temp_c"]["rise"] == pytest.approx(r["temp_c"]["after"] - r["temp_c"]["before"])


def test_the_facts_are_the_models(state: Path):
    facts = devbench.load_results(state / devbench.FILE_NAME)[DEFAULT_MODEL]["facts"]
    # SmolLM2-135M: 30 layers of 576, 3 KV heads of 64 in f16 (K and V): 23,040 B a token.
    assert facts["n_ctx_train"] == 8192 and facts["n_layer"] == 30 and facts["n_embd"] == 576
    assert facts["n_vocab"] == 49152 and facts["kv_bytes_per_token"] == 23040
    assert 130e6 < facts["params"] < 140e6
    assert facts["arch"] == "llama" and facts["swa_window"] is None
    assert facts["q_dim"] is None  # llama's metadata names no key length: n_embd's


def test_the_layer_probe_decodes_a_quarter_of_the_layers_and_leaves_no_copy(
    state: Path, model_path: Path
):
    split = devbench.load_results(state / devbench.FILE_NAME)[DEFAULT_MODEL]["decode_split"]
    assert split["kept_layers"] == 7 and split["threads"] == 1  # 30 // 4
    whole = model_path.stat().st_size
    assert 0.25 * whole < split["kept_size"] < 0.75 * whole  # the embedding stays whole
    assert split["token_ms"]["whole"] > split["token_ms"]["kept"] > 0 or split["layer_s"] == 0.0
    assert split["layer_s"] >= 0  # 0.0: noise parted nothing
    assert not list(model_path.parent.glob(".*-layers.*"))


def test_the_layer_probe_is_skipped_not_failed_without_room(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from daemon.engine import llama_compat

    def never(_: Path) -> None:
        raise AssertionError("nothing may be loaded")

    sizes = devbench.Sizes()
    args = (None, {"n_layer": 30}, {"1": 10.0}, never, [1, 2, 3], sizes)
    assert (
        "too few"
        in layersplit.measure(model_path, None, {"n_layer": 2}, {}, never, [], sizes)["skipped"]
    )
    monkeypatch.setattr(layersplit.memory, "headroom", lambda: 0)
    assert "memory" in layersplit.measure(model_path, *args)["skipped"]
    monkeypatch.undo()

    def unwritable(src: str, dst: str, drop: list[int]) -> None:
        raise RuntimeError(f"llama.cpp could not copy {src}")  # as for a read-only models dir

    monkeypatch.setattr(llama_compat, "copy_without_layers", unwritable)
    assert "no copy beside the model" in layersplit.measure(model_path, *args)["skipped"]
    monkeypatch.setattr(layersplit.device, "disk_free", lambda _: 0)
    assert "disk" in layersplit.measure(model_path, *args)["skipped"]
    assert not list(model_path.parent.glob(".*-layers.*"))


def test_a_copy_without_layers_loads_as_the_shorter_model(model_path: Path, tmp_path: Path):
    from daemon.engine import llama_compat

    copy = tmp_path / "short.gguf"
    llama_compat.copy_without_layers(str(model_path), str(copy), [29, 28, 5])
    llm = llama_compat.load_llama(str(copy), repack=False, n_ctx=64, verbose=False)
    try:
        assert llm.metadata["llama.block_count"] == "27"
        llm.eval(llm.tokenize(b"The kitchen light is on."))  # runs, whatever it would say
    finally:
        llm.close()
    with pytest.raises(RuntimeError, match="could not copy"):
        llama_compat.copy_without_layers(str(tmp_path / "absent.gguf"), str(copy), [1])


@pytest.mark.usefixtures("private_state")  # the state directory the first run wrote to
def test_a_second_model_keeps_the_first(model_path: Path, capsys: pytest.CaptureFixture[str]):
    first = devbench.load_results()[DEFAULT_MODEL]
    printed = bench(capsys, str(model_path))  # a path spec: keyed by its file name
    assert list(printed) == [model_path.name]
    results = devbench.load_results()
    assert results[DEFAULT_MODEL] == first
    assert results[model_path.name]["file"] == str(model_path)


def test_a_corrupt_file_reads_as_empty_and_a_run_rewrites_it(
    tmp_path: Path,
    model_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    del model_path
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    path = tmp_path / "edgellm" / devbench.FILE_NAME
    path.parent.mkdir()
    for junk in ("{not json", "[1, 2]", '{"version": 99, "results": {"x": {}}}'):
        path.write_text(junk)
        assert devbench.load_results() == {}
    bench(capsys)
    assert list(devbench.load_results()) == [DEFAULT_MODEL]
    assert not list(path.parent.glob("*.tmp"))  # written beside, then renamed over


def test_the_table_names_the_model_and_where_it_was_stored(
    private_state: Path, capsys: pytest.CaptureFixture[str]
):
    result = devbench.load_results()[DEFAULT_MODEL]
    text = benchreport.format_table(DEFAULT_MODEL, result, devbench.WARM_TOKENS)
    assert DEFAULT_MODEL in text and "decode tok/s by threads: 1:" in text
    assert "with 7 layers" in text and "a llama-sized layer" in text
    assert str(private_state) in str(devbench.results_path())
    skipped = {**result, "decode_split": {"skipped": "no room on the disk for a copy"}}
    assert "layer probe: skipped (no room" in benchreport.format_table("m", skipped, 100)


def test_an_uninstalled_model_names_the_fetch_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert cli.main(["bench", "-m", str(tmp_path / "models"), *TINY]) == 3
    assert f"edgellm model fetch {DEFAULT_MODEL}" in capsys.readouterr().err
    assert devbench.load_results() == {}


def test_sizes_below_one_are_refused(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--repeats", "0"])
    assert "whole number >= 1" in capsys.readouterr().err


def test_fewest_threads_near_the_fastest_win():
    assert devbench.best_threads({1: 50.0, 2: 90.0, 3: 91.0, 4: 80.0}) == 2
    assert devbench.best_threads({1: 50.0, 2: 70.0}) == 2
    assert devbench.best_threads({1: 50.0}) == 1


def test_temperature_rise_is_none_without_a_sensor():
    assert benchwatch.temperatures(None, None) == {"before": None, "after": None, "rise": None}
    assert benchwatch.temperatures(50.0, 53.3)["rise"] == pytest.approx(3.3)


def test_the_defaults():
    args = cli.build_parser().parse_args(["bench"])
    assert args.threads is None and args.model == DEFAULT_MODEL and args.ha_tokens == 4600


def test_repacking_follows_the_stored_probe_verdict(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    cache = cpuprobe.VerdictCache(cpuprobe.state_dir() / cpuprobe.CACHE_NAME)
    assert devbench.repack_verdict(model_path)[0] is False  # no verdict: off, the safe way
    cache.put(cpuprobe.identity(model_path), {"repack": True, "modes": {"on": "ok"}})
    assert devbench.repack_verdict(model_path) == (True, "stored CPU-probe verdict")


def test_a_cpu_the_probe_refused_is_refused_before_loading(
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    cache = cpuprobe.VerdictCache(cpuprobe.state_dir() / cpuprobe.CACHE_NAME)
    entry = {"repack": False, "unsupported": True, "modes": {"on": "signal SIGILL"}}
    cache.put(cpuprobe.identity(model_path), entry)
    assert cli.main(["bench", str(model_path), *TINY]) == 5
    err = capsys.readouterr().err
    # The probe's own refusal: the build that fits this CPU and a pinned command (cpufit.py).
    assert "crashes on this CPU" in err and "llama-cpp-python==0.3.36" in err
    assert devbench.load_results() == {}


def test_the_png_draws_every_model_benched_here(tmp_path: Path):
    pytest.importorskip("matplotlib")
    result = {
        "machine": {"cpu": "a CPU", "board": "generic"},
        "decode_tps": {"1": 50.0, "2": 70.0},
        "prompt_tps": {"512": 400.0, "ha": 260.0},
    }
    out = benchreport.draw({"a": result, "b": result}, tmp_path / "bench.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
