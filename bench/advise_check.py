"""`edgellm advise`'s estimates against `edgellm bench`'s measurements on this machine (issue 19:
within +-30 %). For every pair of catalog models benched here, the speeds advise would estimate
for one from the other's measurement (its only basis on a device where just one model was
benched), against the one's own measurement.

    python -m bench.advise_check [--run smollm2-135m gemma3-270m]

--run benches the named models first (`edgellm bench NAME`, one after the other, nothing else
should run meanwhile); without it the stored results (bench.json in the state dir) are used.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from bench.common import machine, report
from daemon import devbench, estimate
from daemon.catalog import CATALOG


def compare(basis: str, target: str, results: dict[str, Any]) -> dict[str, Any]:
    a, b = results[basis], results[target]
    shape_a = estimate.shape_from_bench(basis, a, True, False)
    shape_b = estimate.shape_from_bench(target, b, True, False)
    rates = estimate.rates_from_bench(shape_a, a, basis)
    est = estimate.estimate_speeds(shape_b, rates)
    own = estimate.measured_speeds(b)
    plain = estimate.estimate_speeds(shape_b, estimate.rates_from(shape_a, *_speeds(a), basis))
    pairs = {
        "prompt_tps": (est.prompt_tps, own.prompt_tps),
        "prompt_tps_without_splits": (plain.prompt_tps, own.prompt_tps),
        "prompt_512_tps": (1 / rates.prompt_s(shape_b, 512), float(b["prompt_tps"]["512"])),
        "decode_tps": (est.decode_tps, own.decode_tps),
        "decode_tps_without_splits": (plain.decode_tps, own.decode_tps),
        "ttft_cold_s": (est.ttft_cold_s, float(b["ttft_s"]["cold_ha"])),
        "ttft_warm_s": (est.ttft_warm_s, float(b["ttft_s"]["warm_ha"])),
    }
    return {
        "estimated_from": basis,
        "model": target,
        **{
            k: {
                "estimated": round(e, 3),
                "measured": round(m, 3),
                "error_pct": round((e - m) / m * 100, 1),
            }
            for k, (e, m) in pairs.items()
        },
    }


def _speeds(result: dict[str, Any]) -> tuple[float, float]:
    """(prompt, decode) tok/s as stored: the plain arithmetic's only inputs."""
    got = estimate.measured_speeds(result)
    return got.prompt_tps, got.decode_tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", nargs="*", default=[], help="bench these catalog models first")
    args = ap.parse_args()
    for name in args.run:
        subprocess.run([sys.executable, "-m", "daemon", "bench", name], check=True)
    results = {k: v for k, v in devbench.load_results().items() if k in CATALOG}
    names = sorted(results)
    rows = [compare(a, b, results) for a in names for b in names if a != b]
    worst = max(
        (abs(r[k]["error_pct"]) for r in rows for k in ("prompt_tps", "decode_tps")), default=None
    )
    report(
        "advise_check",
        {
            "machine": machine(),
            "benched": {n: results[n]["measured_at"] for n in names},
            "pairs": rows,
            "worst_speed_error_pct": worst,
        },
    )


if __name__ == "__main__":
    main()
