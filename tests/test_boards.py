"""Board detection from fake trees, and the config overriding a board's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import GovernorConfig
from daemon.governor import boards
from tests import fakesys


@pytest.mark.parametrize(
    ("model", "name"),
    [
        (b"Raspberry Pi 5 Model B Rev 1.0\x00", "raspberry-pi-5"),
        (b"Raspberry Pi Compute Module 5 Rev 1.0\x00", "raspberry-pi-5"),
        (b"Raspberry Pi 500 Rev 1.0\x00", "raspberry-pi-5"),
        (b"Raspberry Pi 4 Model B Rev 1.4\x00", "raspberry-pi-4"),
        (b"Raspberry Pi 400 Rev 1.0\x00", "raspberry-pi-4"),
        (b"Raspberry Pi 3 Model B Plus Rev 1.3\x00", "raspberry-pi"),
        (b"Raspberry Pi Model B Rev 2\x00", "raspberry-pi"),
        (b"NVIDIA Jetson Orin Nano Developer Kit\x00", "jetson-orin"),
        (b"NVIDIA Jetson Nano Developer Kit\x00", "jetson"),
        (b"Radxa ROCK 5B\x00", "generic"),
    ],
)
def test_device_tree_model_picks_the_profile(tmp_path: Path, model: bytes, name: str):
    fakesys.write(tmp_path, "proc/device-tree/model", model)
    profile = boards.detect(tmp_path)
    assert profile.name == name
    assert profile.model == model.rstrip(b"\x00").decode()


def test_fake_trees_are_detected(tmp_path: Path):
    assert boards.detect(fakesys.pi5(tmp_path / "a")).soft_temp_c == 80
    assert boards.detect(fakesys.pi4(tmp_path / "b")).soft_temp_c == 75
    orin = boards.detect(fakesys.jetson_orin(tmp_path / "c"))
    assert orin.name == "jetson-orin" and orin.soft_temp_c == 85 and orin.has_power_modes
    assert boards.detect(fakesys.x86_bare(tmp_path / "d")) == boards.GENERIC
    assert boards.detect(fakesys.container(tmp_path / "e")).name == "generic"


def test_a_tegra_release_file_alone_means_jetson(tmp_path: Path):
    fakesys.write(tmp_path, "etc/nv_tegra_release", "# R32 (release), REVISION: 7.1\n")
    assert boards.detect(tmp_path).name == "jetson"


def test_profiles_are_ordered_and_pi_boards_have_throttle_flags():
    for profile in (
        boards.RASPBERRY_PI_5,
        boards.RASPBERRY_PI_4,
        boards.RASPBERRY_PI,
        boards.JETSON_ORIN,
        boards.JETSON,
        boards.GENERIC,
    ):
        assert profile.soft_temp_c < profile.hard_temp_c
        assert profile.has_throttle_flags == profile.name.startswith("raspberry-pi")
        assert profile.mem_margin_bytes > 0


def test_resolve_fills_null_keys_from_the_board():
    cfg = boards.resolve(GovernorConfig(), boards.RASPBERRY_PI_5, n_ctx=2048)
    assert (cfg.soft_temp_c, cfg.hard_temp_c) == (80, 85)
    assert cfg.mem_margin_mb == 200
    assert cfg.ctx_max == 2048
    assert cfg.max_threads is None  # the Pi 5 profile has no cap: the cores (or the sweep)
    jetson = boards.resolve(GovernorConfig(), boards.JETSON_ORIN)
    assert jetson.mem_margin_mb == 400 and jetson.ctx_max is None


def test_config_overrides_the_board():
    cfg = GovernorConfig(soft_temp_c=70, hard_temp_c=78, mem_margin_mb=50, ctx_max=1024)
    resolved = boards.resolve(cfg, boards.JETSON_ORIN, n_ctx=4096)
    assert (resolved.soft_temp_c, resolved.hard_temp_c) == (70, 78)
    assert (resolved.mem_margin_mb, resolved.ctx_max) == (50, 1024)


def test_one_user_limit_moves_the_boards_other_to_stay_ordered():
    high_soft = boards.resolve(GovernorConfig(soft_temp_c=88), boards.RASPBERRY_PI_5)
    assert high_soft.hard_temp_c is not None and high_soft.hard_temp_c > 88
    low_hard = boards.resolve(GovernorConfig(hard_temp_c=70), boards.RASPBERRY_PI_5)
    assert low_hard.soft_temp_c is not None and low_hard.soft_temp_c < 70


def test_a_board_thread_cap_never_undercuts_min_threads():
    capped = boards.BoardProfile("tiny", 70, 80, max_threads=2)
    assert boards.resolve(GovernorConfig(), capped).max_threads == 2
    assert boards.resolve(GovernorConfig(min_threads=3), capped).max_threads == 3


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"governor": {"soft_temp_c": 80, "hard_temp_c": 75}}, "hard_temp_c must be above"),
        ({"governor": {"min_threads": 4, "max_threads": 2}}, "max_threads must not be below"),
        ({"governor": {"ctx_min": 2048, "ctx_max": 1024}}, "ctx_max must not be below"),
        ({"governor": {"temp_band_c": -1}}, "governor.temp_band_c"),
        ({"governor": {"hysteris_s": 5}}, "governor.hysteris_s: unknown key"),
        ({"monitor": {"source": "replay"}}, "source: replay needs a trace file"),
        ({"monitor": {"source": "gpio"}}, "monitor.source"),
        ({"monitor": {"sim": {"cool_per_s": 0}}}, "monitor.sim.cool_per_s"),
    ],
)
def test_governor_and_monitor_config_errors_name_the_key(data: dict, fragment: str):
    from daemon import config

    with pytest.raises(config.ConfigError, match=fragment):
        config.parse(data, "test.yaml")
