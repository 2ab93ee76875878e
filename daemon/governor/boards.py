"""Which board this is, and that board's defaults: thermal limits, thread cap, memory margin."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from daemon.config import GovernorConfig
from daemon.governor.snapshot import MIB


@dataclass(frozen=True)
class BoardProfile:
    """Defaults for one kind of board; the governor config overrides each of them."""

    name: str
    soft_temp_c: float
    hard_temp_c: float
    max_threads: int | None = None  # None: all cores (the thread sweep may still pick fewer)
    mem_margin_bytes: int = 200 * MIB
    has_throttle_flags: bool = False  # the Pi firmware's get_throttled
    has_power_modes: bool = False  # Jetson nvpmodel
    model: str = ""  # the device-tree model string, for logs and telemetry


# The Pi 5's firmware starts capping the clock at 80 °C and throttles hard at 85 °C; the Pi 4
# runs hotter for the work done and has less margin, so act earlier there.
RASPBERRY_PI_5 = BoardProfile("raspberry-pi-5", 80.0, 85.0, has_throttle_flags=True)
RASPBERRY_PI_4 = BoardProfile("raspberry-pi-4", 75.0, 80.0, has_throttle_flags=True)
RASPBERRY_PI = BoardProfile("raspberry-pi", 70.0, 80.0, has_throttle_flags=True)
# Orin throttles in software near 99 °C junction; stay well clear. CPU and GPU share the memory,
# and the CUDA runtime takes its own, so keep a bigger margin on every Jetson.
JETSON_ORIN = BoardProfile(
    "jetson-orin", 85.0, 95.0, mem_margin_bytes=400 * MIB, has_power_modes=True
)
JETSON = BoardProfile("jetson", 80.0, 90.0, mem_margin_bytes=400 * MIB, has_power_modes=True)
GENERIC = BoardProfile("generic", 85.0, 95.0)

_PI_GENERATION = re.compile(r"Raspberry Pi (?:Compute Module )?(\d)")


def read_model(root: Path = Path("/")) -> str:
    """The device-tree model string ("" when there is none, as on x86)."""
    try:
        raw = (root / "proc/device-tree/model").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\x00\n").decode("utf-8", errors="replace").strip()


def detect(root: Path = Path("/")) -> BoardProfile:
    """The profile of the board under root, from its device-tree model and Tegra release file."""
    model = read_model(root)
    profile = GENERIC
    if model.startswith("Raspberry Pi"):
        # "Raspberry Pi 5 Model B", "Compute Module 5", "Raspberry Pi 500": the first digit.
        match = _PI_GENERATION.match(model)
        generation = match.group(1) if match else ""
        profile = {"5": RASPBERRY_PI_5, "4": RASPBERRY_PI_4}.get(generation, RASPBERRY_PI)
    elif (root / "etc/nv_tegra_release").exists() or "Jetson" in model:
        profile = JETSON_ORIN if "Orin" in model else JETSON
    return replace(profile, model=model)


def resolve(cfg: GovernorConfig, profile: BoardProfile, n_ctx: int | None = None) -> GovernorConfig:
    """The governor config with its null keys filled from the board profile and model.n_ctx."""
    update: dict[str, Any] = {}
    soft, hard = cfg.soft_temp_c, cfg.hard_temp_c
    gap = profile.hard_temp_c - profile.soft_temp_c
    # A user's own soft limit above the board's hard one moves the hard one with it (and the
    # reverse), so the resolved pair is always ordered.
    if soft is None:
        soft = profile.soft_temp_c if hard is None else min(profile.soft_temp_c, hard - gap)
        update["soft_temp_c"] = soft
    if hard is None:
        update["hard_temp_c"] = max(profile.hard_temp_c, soft + gap)
    if cfg.max_threads is None and profile.max_threads is not None:
        update["max_threads"] = max(profile.max_threads, cfg.min_threads)
    if cfg.mem_margin_mb is None:
        update["mem_margin_mb"] = profile.mem_margin_bytes // MIB
    if cfg.ctx_max is None and n_ctx is not None:
        # May fall below ctx_min (a tiny model.n_ctx): the governor then holds it at n_ctx.
        update["ctx_max"] = n_ctx
    return cfg.model_copy(update=update)
