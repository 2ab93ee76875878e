"""`edgellm simulate`: the policy on a virtual clock against the thermal model and a trace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon import config
from daemon.governor.simulate import Workload, draw, simulate
from tests.helpers import REPO

DATA = Path(__file__).parent / "data"


def test_hot_load_steps_threads_down_and_keeps_under_the_hard_limit():
    cfg = config.parse({"monitor": {"source": "sim"}})
    rows = simulate(cfg, 900, workload=Workload(duty=0.95), start_threads=4)
    assert rows[0].threads == 4
    assert min(r.threads for r in rows) < 4
    temps = [r.cpu_temp_c for r in rows if r.cpu_temp_c is not None]
    assert max(temps) < 85  # generic board: soft 85, the policy acts at 83
    assert all(1 <= r.threads <= 4 for r in rows)
    # Fewer threads when hot cost speed: tokens/s follows the thread count.
    busy = [r for r in rows if r.busy]
    assert max(r.tokens_per_s for r in busy if r.threads == 3) < min(
        r.tokens_per_s for r in busy if r.threads == 4
    )


def test_cool_load_changes_nothing():
    cfg = config.parse({"monitor": {"source": "sim"}})
    rows = simulate(cfg, 600, workload=Workload(duty=0.3), start_threads=4)
    assert {r.threads for r in rows} == {4}
    assert not any(r.reason for r in rows)


def test_replayed_trace_drives_the_policy():
    cfg = config.parse({})
    rows = simulate(cfg, 360, trace=DATA / "pi5_heatup.csv", start_threads=4)
    assert min(r.threads for r in rows) < 4
    assert rows[-1].threads == 4  # the trace cools down at the end and threads come back


def test_png_is_drawn(tmp_path: Path):
    cfg = config.parse({"monitor": {"source": "sim"}})
    out = draw(simulate(cfg, 120), tmp_path / "sim.png", 80, 85)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_cli_writes_png_and_csv(tmp_path: Path):
    png, csv = tmp_path / "s.png", tmp_path / "s.csv"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "simulate",
            "--duration",
            "600",
            "--duty",
            "0.95",
            "--out",
            str(png),
            "--csv",
            str(csv),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "threads 4 -> 3" in out.stdout
    assert png.exists() and csv.read_text().startswith("t,cpu_temp_c,threads")
    assert len(csv.read_text().splitlines()) == 602
