"""`edgellm advise`: what fits a device and how fast, from the catalog's facts and the speeds
measured (`edgellm bench`) or published for the board; fake boards at the sensor-root seam."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from daemon import advise, device, estimate
from daemon.catalog import CATALOG
from daemon.estimate import MIB, Shape
from tests import fakesys

SMALL = Shape("small", 100 * MIB, 0.15e9, 49152, 576, 30, 23040, 8192, True, False)


def test_a_model_fits_is_tight_or_does_not_by_memory_and_disk():
    need = estimate.fit(SMALL, 10_000 * MIB, 200 * MIB, None).need
    assert need > SMALL.size + SMALL.kv_bytes_per_token * 8192  # compute buffers counted
    assert estimate.fit(SMALL, need + 200 * MIB, 200 * MIB, None).verdict == "fits"
    tight = estimate.fit(SMALL, need + 100 * MIB, 200 * MIB, None)
    assert tight.verdict == "tight" and tight.context == 8192  # only without the margin
    smaller = estimate.fit(SMALL, need - 100 * MIB, 200 * MIB, None)
    assert smaller.verdict == "tight" and 2048 <= smaller.context < 8192
    assert estimate.fit(SMALL, 150 * MIB, 200 * MIB, None).verdict == "no"
    no_disk = estimate.fit(SMALL, 10_000 * MIB, 200 * MIB, 50 * MIB)
    assert no_disk.verdict == "no" and "disk" in no_disk.reason
    unknown = estimate.fit(SMALL, None, 200 * MIB, None)
    assert unknown.verdict == "tight" and "unknown" in unknown.reason


def test_a_published_anchor_gives_back_its_own_figures_and_scales_by_size():
    rates = estimate.published_rates("raspberry-pi-5")
    assert rates is not None and "Pi 5" in rates.basis
    anchor = estimate._QWEN05_Q4_0
    speeds = estimate.estimate_speeds(anchor, rates)
    assert speeds.prompt_tps == pytest.approx(290.0)
    assert speeds.decode_tps == pytest.approx(34.0)
    bigger = replace(anchor, size=anchor.size * 2, kv_bytes_per_token=anchor.kv_bytes_per_token * 2)
    assert estimate.estimate_speeds(bigger, rates).decode_tps == pytest.approx(17.0)
    assert estimate.published_rates("generic") is None


GEMMA = Shape(
    "gemma", 240 * MIB, 0.27e9, 262144, 640, 18, 18432, 32768, True, False, "gemma3", 1024, 512
)


def test_a_layers_fixed_cost_and_the_bandwidth_are_parted_by_a_shorter_copy():
    layer_s, per_byte = 0.2e-3, 1 / 15e9  # 0.2 ms a llama layer, 15 GB/s
    head = 30 * MIB  # the embedding, read whole as the output matrix
    layer_bytes = (SMALL.size - head) / SMALL.n_layer

    def decode_s(layers: int) -> float:
        return layers * layer_s + (head + layers * layer_bytes) * per_byte

    kept_size = int(head + 7 * layer_bytes)
    got = estimate.split_decode(SMALL, 7, kept_size, decode_s(30), decode_s(7))
    assert got == pytest.approx(layer_s, rel=1e-6)
    gemma = replace(SMALL, arch="gemma3")  # more graph nodes a layer: its cost is scaled back
    assert estimate.split_decode(gemma, 7, kept_size, decode_s(30), decode_s(7)) == pytest.approx(
        layer_s * 36 / 45, rel=1e-6
    )
    # Noise that makes the shorter copy no faster parts nothing: no per-layer cost claimed.
    assert estimate.split_decode(SMALL, 7, kept_size, decode_s(30), decode_s(30)) == 0.0
    assert estimate.split_decode(SMALL, 30, SMALL.size, decode_s(30), decode_s(30)) == 0.0


def _bench_result(shape: Shape, prompt: dict[str, float], decode: float, layer_s: float) -> dict:
    facts = {
        "params": shape.params,
        "n_vocab": shape.n_vocab,
        "n_embd": shape.n_embd,
        "n_layer": shape.n_layer,
        "kv_bytes_per_token": shape.kv_bytes_per_token,
        "n_ctx_train": shape.n_ctx_train,
        "arch": shape.arch,
        "q_dim": shape.q_dim or None,
        "swa_window": shape.swa_window or None,
    }
    return {
        "size": shape.size,
        "facts": facts,
        "prompt_tps": prompt,
        "ha_prompt_tokens": estimate.HA_PROMPT_TOKENS,
        "decode_tps": {"2": decode},
        "decode_split": {"layer_s": layer_s},
    }


def test_a_bench_gives_back_its_own_speeds_and_parts_attention_from_the_dense_work():
    result = _bench_result(SMALL, {"512": 400.0, "ha": 250.0}, 150.0, 0.15e-3)
    assert estimate.shape_from_bench("small", result, True, False) == SMALL
    rates = estimate.rates_from_bench(SMALL, result, "small")
    back = estimate.estimate_speeds(SMALL, rates)
    assert back.prompt_tps == pytest.approx(250.0) and back.decode_tps == pytest.approx(150.0)
    assert 1 / rates.prompt_s(SMALL, 512) == pytest.approx(400.0)  # both lengths fit
    assert rates.layer_s == 0.15e-3 and rates.attention_flops > 0
    # Two models of the same bytes: the one with more layers decodes slower by their cost.
    deeper = replace(SMALL, n_layer=60)
    assert 1 / rates.decode_s(deeper) == pytest.approx(1 / (1 / 150.0 + 30 * 0.15e-3))
    # A per-layer cost beyond the whole token's time is noise: plain bandwidth instead.
    noisy = estimate.rates_from_bench(SMALL, {**result, "decode_split": {"layer_s": 1.0}}, "x")
    assert noisy.layer_s == 0.0 and 1 / noisy.decode_s(SMALL) == pytest.approx(150.0)
    # The TTFTs: the cold one is the whole prompt; a warm turn's tokens see the whole prompt.
    assert back.ttft_cold_s == pytest.approx(estimate.HA_PROMPT_TOKENS / 250.0 + 1 / 150.0)
    per_warm_token = (back.ttft_warm_s - 1 / 150.0) / estimate.WARM_NEW_TOKENS
    assert 1 / 250.0 < per_warm_token < 1 / 250.0 + 2 * (1 / 250.0 - 1 / 400.0)
    # The layer probe's whole-model step time is the measured decode where it ran.
    probed = {**result, "decode_split": {"layer_s": 0.0, "token_ms": {"whole": 5.0}}}
    assert estimate.measured_speeds(probed).decode_tps == pytest.approx(200.0)
    # A long prompt no slower per token than a short one parts nothing: one rate for both.
    flat = estimate.rates_from_bench(
        SMALL, _bench_result(SMALL, {"512": 250.0, "ha": 250.0}, 150.0, 0.0), "x"
    )
    assert flat.attention_flops == 0.0 and 1 / flat.prompt_s(SMALL) == pytest.approx(250.0)


def test_sliding_window_layers_stop_costing_more_past_their_window():
    full = replace(GEMMA, swa_window=0)
    assert GEMMA.attention_flops(512) == pytest.approx(full.attention_flops(512))
    assert GEMMA.attention_flops(4600) < 0.5 * full.attention_flops(4600)
    # 3 of 18 layers attend to everything: the growth past the window is theirs.
    grow = GEMMA.attention_flops(9200) - GEMMA.attention_flops(4600)
    assert grow == pytest.approx(
        (full.attention_flops(9200) - full.attention_flops(4600)) * 3 / 18, rel=0.1
    )
    assert SMALL.attention_flops(4600) == pytest.approx(4 * 30 * 576 * 2300)  # q_dim: n_embd


def test_every_catalog_model_has_the_facts_advise_needs():
    for name, entry in CATALOG.items():
        shape = advise.shape_of(entry)
        assert shape is not None, name
        assert shape.size > 0 and shape.kv_bytes_per_token > 0 and shape.prompt_flops > 0
        if entry.sha256 is not None:
            assert len(entry.sha256) == 64 and entry.size
    tools = {n for n, e in CATALOG.items() if e.facts and e.facts.tools}
    assert {"qwen2.5-0.5b", "qwen3-4b", "llama3.2-1b"} <= tools
    assert "smollm2-135m" not in tools and "gemma3-1b" not in tools


def _advise(dev: device.Device, results: dict, installed: set[str]) -> list[advise.Advice]:
    return advise.advise(dev, results, installed, advise.device_rates(dev, results))


def _device(root: Path, tmp_path: Path) -> device.Device:
    return device.read(tmp_path / "models", root)


def test_a_pi5_with_8_gb_is_advised_from_published_figures(tmp_path: Path):
    dev = _device(fakesys.pi5(tmp_path / "root"), tmp_path)
    assert dev.board == "raspberry-pi-5" and dev.mem_available is not None
    advice = {a.model: a for a in _advise(dev, {}, set())}
    assert advice["qwen2.5-1.5b"].fit.verdict == "fits"
    assert advice["qwen2.5-1.5b"].speeds is not None
    assert advice["qwen2.5-1.5b"].speeds.basis.startswith("estimated from published Pi 5")
    rec = advise.recommend(list(advice.values()))
    assert rec["home_assistant"] is not None and CATALOG[rec["home_assistant"]].facts.tools
    assert rec["voice"] is not None


def test_a_pi4_with_2_gb_cannot_take_the_large_models(tmp_path: Path):
    dev = _device(fakesys.pi4(tmp_path / "root"), tmp_path)
    advice = {a.model: a for a in _advise(dev, {}, set())}
    assert advice["qwen3-4b"].fit.verdict == "no"
    assert advice["smollm2-135m"].fit.verdict == "fits"
    rec = advise.recommend(list(advice.values()))
    assert rec["home_assistant"] not in ("qwen3-4b", "llama3.2-3b", "phi4-mini")


def test_a_jetson_counts_the_gpus_share_of_the_ram(tmp_path: Path):
    dev = _device(fakesys.jetson_orin(tmp_path / "root"), tmp_path)
    assert dev.unified_gpu and dev.gpu_mem_used == 312 * 1024 * 1024
    report = {
        "device": asdict(dev),
        "speeds_basis": None,
        "models": [],
        "recommended": {"voice": None, "home_assistant": None},
        "ha_prompt_tokens": 4600,
    }
    assert "GPU: unified memory (shares the RAM above); mapped for the GPU now: 312 MiB" in (
        advise.render(report)
    )
    pi = _device(fakesys.pi5(tmp_path / "pi"), tmp_path)
    assert not pi.unified_gpu and pi.gpu_mem_used is None


def test_a_board_with_no_readings_gets_advice_not_a_crash(tmp_path: Path):
    root = tmp_path / "empty"
    root.mkdir()
    dev = _device(root, tmp_path)
    assert dev.mem_available is None and dev.features == () and dev.board == "generic"
    advice = _advise(dev, {}, set())
    assert all(a.fit.verdict == "tight" for a in advice)  # memory unknown
    assert all(a.speeds is None for a in advice)  # a generic board has no published figures


def test_a_bench_on_this_device_is_used_as_measured_and_scales_the_others(tmp_path: Path):
    dev = _device(fakesys.pi5(tmp_path / "root"), tmp_path)
    result = {
        "model": "smollm2-135m",
        "size": CATALOG["smollm2-135m"].size,
        "measured_at": "2026-12-02T00:00:00Z",
        "machine": {"cpu": dev.cpu},
        "facts": {
            "params": 134515008,
            "n_vocab": 49152,
            "n_embd": 576,
            "n_layer": 30,
            "kv_bytes_per_token": 23040,
            "n_ctx_train": 8192,
        },
        "prompt_tps": {"512": 400.0, "ha": 300.0},
        "decode_tps": {"1": 40.0, "2": 60.0},
        "ttft_s": {"cold_ha": 15.0, "warm_ha": 0.4},
    }
    advice = {a.model: a for a in _advise(dev, {"smollm2-135m": result}, set())}
    own = advice["smollm2-135m"].speeds
    assert own is not None and own.basis.startswith("measured")
    assert (own.prompt_tps, own.decode_tps) == (300.0, 60.0)
    other = advice["gemma3-270m"].speeds
    assert other is not None and "smollm2-135m measured on this device" in other.basis
    assert other.decode_tps < own.decode_tps  # a bigger file: slower decode
    elsewhere = {**result, "machine": {"cpu": "another CPU"}}
    moved = {a.model: a for a in _advise(dev, {"smollm2-135m": elsewhere}, set())}
    assert moved["smollm2-135m"].speeds.basis.startswith("estimated from published")


def test_the_report_is_json_and_the_table_names_every_model(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    report = advise.run(tmp_path / "models", {"smollm2-135m"})
    text = json.dumps(report)
    assert json.loads(text)["recommended"].keys() == {"voice", "home_assistant"}
    table = advise.render(report)
    for name in CATALOG:
        assert name in table
    assert "not installed" in table


def test_the_picks_are_the_largest_that_fit_and_are_fast_enough():
    def one(name: str, params_b: float, verdict: str, decode: float, warm: float, tools: bool):
        speeds = estimate.Speeds(500.0, decode, "estimated", 10.0, warm)
        fit = estimate.Fit(verdict, 1, 8192, "")
        return advise.Advice(name, "", False, fit, speeds, tools, True, params_b)

    pool = [
        one("big-slow", 4.0, "fits", 5.0, 4.0, True),  # too slow to speak, too slow a follow-up
        one("mid", 1.7, "fits", 12.0, 0.8, True),
        one("small", 0.5, "fits", 40.0, 0.2, True),
        one("huge", 8.0, "no", 50.0, 0.1, True),  # fast but does not fit
    ]
    assert advise.recommend(pool) == {"voice": "mid", "home_assistant": "mid"}
    no_tools = [replace(a, tools=False) for a in pool]
    assert advise.recommend(no_tools)["home_assistant"] is None
    tight_only = [
        a if a.fit.verdict == "no" else replace(a, fit=replace(a.fit, verdict="tight"))
        for a in pool
    ]
    assert advise.recommend(tight_only)["voice"] == "mid"  # tight ones when none fits
