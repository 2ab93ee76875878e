"""`edgellm advise`: for every catalog model, whether it fits this device and how fast it will
be on a Home Assistant-sized prompt, measured where `edgellm bench` has run and estimated
otherwise; and the model to pick for voice and for Home Assistant control."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from daemon import devbench, device, estimate
from daemon.catalog import CATALOG, CatalogEntry
from daemon.estimate import Fit, Rates, Shape, Speeds

# Bytes per weight of each quantization, for a file whose size is not pinned.
_BYTES_PER_WEIGHT = {"Q8_0": 1.0625, "Q4_K_M": 0.60, "Q4_0": 0.5625, "Q4_1": 0.625}


@dataclass(frozen=True)
class Advice:
    model: str
    description: str
    installed: bool
    fit: Fit
    speeds: Speeds | None
    tools: bool
    chat: bool
    params_b: float


def shape_of(entry: CatalogEntry) -> Shape | None:
    f = entry.facts
    if f is None:
        return None
    params = f.params_b * 1e9
    size = entry.size or int(params * _BYTES_PER_WEIGHT.get(f.quant, 1.0))
    return Shape(
        entry.name,
        size,
        params,
        f.n_vocab,
        f.n_embd,
        f.n_layer,
        f.kv_bytes_per_token,
        f.n_ctx_train,
        entry.chat,
        f.tools,
        f.arch,
        f.n_head * f.head_dim,
        f.swa_window,
    )


def device_rates(dev: device.Device, results: dict[str, Any]) -> Rates | None:
    """The rates of the newest benched catalog model on this CPU, else the board's published."""
    mine = [
        (r.get("measured_at", ""), name, r)
        for name, r in results.items()
        if name in CATALOG and r.get("machine", {}).get("cpu") == dev.cpu
    ]
    if mine:
        _, name, result = max(mine, key=lambda e: e[0])
        entry = CATALOG[name]
        shape = estimate.shape_from_bench(name, result, entry.chat, False)
        basis = f"{name} measured on this device (edgellm bench)"
        return estimate.rates_from_bench(shape, result, basis)
    return estimate.published_rates(dev.board)


def advise(
    dev: device.Device, results: dict[str, Any], installed: set[str], rates: Rates | None
) -> list[Advice]:
    """Every catalog model's fit and speeds on dev (rates: device_rates(dev, results))."""
    out = []
    for name, entry in CATALOG.items():
        shape = shape_of(entry)
        if shape is None:
            continue
        result = results.get(name)
        if result is not None and result.get("machine", {}).get("cpu") == dev.cpu:
            speeds: Speeds | None = estimate.measured_speeds(result)
        else:
            speeds = None if rates is None else estimate.estimate_speeds(shape, rates)
        disk = None if name in installed else dev.disk_free
        fit = estimate.fit(shape, dev.mem_available, dev.margin, disk)
        out.append(
            Advice(
                name,
                entry.description,
                name in installed,
                fit,
                speeds,
                shape.tools,
                entry.chat,
                round(shape.params / 1e9, 2),
            )
        )
    return out


def recommend(advice: list[Advice]) -> dict[str, str | None]:
    """The largest model (by parameters) that fits and is fast enough, for voice and for HA
    control (tight ones only when none fits)."""

    def pick(ok: Any) -> str | None:
        for verdicts in (("fits",), ("fits", "tight")):
            good = [a for a in advice if a.chat and a.fit.verdict in verdicts and ok(a)]
            if good:
                return max(good, key=lambda a: a.params_b).model
        return None

    def voice(a: Advice) -> bool:
        return a.speeds is None or (
            a.speeds.decode_tps >= estimate.VOICE_DECODE_MIN
            and a.speeds.ttft_warm_s <= estimate.VOICE_WARM_TTFT_MAX_S
        )

    def control(a: Advice) -> bool:
        fast = a.speeds is None or (
            a.speeds.decode_tps >= estimate.HA_DECODE_MIN
            and a.speeds.ttft_warm_s <= estimate.HA_WARM_TTFT_MAX_S
            and a.speeds.ttft_cold_s <= estimate.HA_COLD_TTFT_MAX_S
        )
        return a.tools and fast

    return {"voice": pick(voice), "home_assistant": pick(control)}


def run(models_dir: Path, installed: set[str]) -> dict[str, Any]:
    """Everything advise prints, as one JSON-able dict."""
    dev = device.read(models_dir)
    results = devbench.load_results()
    rates = device_rates(dev, results)
    advice = advise(dev, results, installed, rates)
    return {
        "device": asdict(dev),
        "speeds_basis": rates.basis if rates is not None else None,
        "models": [
            {
                **asdict(a),
                "ttft_cold_s": None if a.speeds is None else round(a.speeds.ttft_cold_s, 2),
                "ttft_warm_s": None if a.speeds is None else round(a.speeds.ttft_warm_s, 2),
            }
            for a in advice
        ],
        "recommended": recommend(advice),
        "ha_prompt_tokens": estimate.HA_PROMPT_TOKENS,
    }


def render(report: dict[str, Any]) -> str:
    """The human table."""
    dev = report["device"]
    mib = estimate.MIB
    avail = dev["mem_available"]
    lines = [
        f"device: {dev['board']} {dev['board_model'] or ''}".rstrip()
        + f"; {dev['cpu']}, {dev['cores']} cores ({' '.join(dev['features']) or 'no listed'}"
        + " features)",
        f"memory available: {'unknown' if avail is None else f'{avail // mib} MiB'}"
        + f"; margin {dev['margin'] // mib} MiB; disk free: "
        + ("unknown" if dev["disk_free"] is None else f"{dev['disk_free'] // mib} MiB"),
        *_gpu_line(dev),
        f"speeds: {report['speeds_basis'] or 'unknown (run `edgellm bench` on this device)'}",
        f"HA prompt: {report['ha_prompt_tokens']} tokens",
        "",
        f"{'model':<15} {'fit':<6} {'need MiB':>8} {'ctx':>6} {'prompt/s':>9} {'decode/s':>9}"
        f" {'cold s':>7} {'warm s':>7}  tools  basis",
    ]
    for m in report["models"]:
        sp = m["speeds"]
        nums = (
            f"{sp['prompt_tps']:>9.0f} {sp['decode_tps']:>9.1f} {m['ttft_cold_s']:>7.1f}"
            f" {m['ttft_warm_s']:>7.2f}"
            if sp
            else f"{'?':>9} {'?':>9} {'?':>7} {'?':>7}"
        )
        basis = "measured" if sp and sp["basis"].startswith("measured") else "estimated"
        lines.append(
            f"{m['model']:<15} {m['fit']['verdict']:<6} {m['fit']['need'] // mib:>8}"
            f" {m['fit']['context']:>6} {nums}  {'yes' if m['tools'] else 'no':<5}  "
            + (basis if sp else "-")
            + ("" if m["installed"] else ", not installed")
        )
    rec = report["recommended"]
    how = "" if report["speeds_basis"] else " (by memory alone: speeds unknown)"
    lines += [
        "",
        f"for voice (first sentence fast): {rec['voice'] or 'none fits'}{how}",
        f"for Home Assistant control (tools): {rec['home_assistant'] or 'none fits'}{how}",
    ]
    return "\n".join(lines)


def _gpu_line(dev: dict[str, Any]) -> list[str]:
    """A Jetson's GPU shares the RAM: what it has mapped now is already out of the memory
    available above, so a CUDA model's weights and KV are counted the same way."""
    if not dev["unified_gpu"]:
        return []
    used = dev.get("gpu_mem_used")
    now = "unknown" if used is None else f"{used // estimate.MIB} MiB"
    return [f"GPU: unified memory (shares the RAM above); mapped for the GPU now: {now}"]


def add_parser(sub: Any) -> None:
    """The `advise` subcommand's arguments."""
    p = sub.add_parser(
        "advise", help="which models fit this device, and how fast", description=__doc__
    )
    p.add_argument("-m", "--models-dir", type=Path, help="models directory")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def main(args: argparse.Namespace) -> int:
    from daemon import logsetup, models

    logsetup.configure("error", "console")
    models_dir = args.models_dir or models.default_models_dir()
    installed = {name for name, path in models.installed(models_dir) if path is not None}
    report = run(models_dir, installed)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0
