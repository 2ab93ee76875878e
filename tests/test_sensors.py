"""The monitor: fake board trees, this machine, a replayed trace, and the thermal model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from daemon.config import MonitorConfig
from daemon.governor import memory, sensors
from daemon.governor.replay import ReplaySensors
from daemon.governor.sensors import SystemSensors
from daemon.governor.snapshot import Snapshot, ThrottleFlags
from daemon.governor.sources import make_sensors
from daemon.governor.thermalsim import SimulatedSensors
from tests import fakesys
from tests.fakesys import MIB, FakeClock

TRACE = Path(__file__).parent / "data" / "pi5_heatup.csv"


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    """What the monitor logs (a fresh logger: a cached one would bypass capture_logs)."""
    with capture_logs() as captured:
        for module in (memory, sensors):
            monkeypatch.setattr(module, "log", structlog.get_logger(module.__name__))
        yield captured


def warnings(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["log_level"] == "warning"]


# -- the real-machine reader on fake trees -------------------------------------------------------


def test_pi5_reads_temperature_throttle_memory_and_board(tmp_path: Path, logs: list[dict]):
    clock = FakeClock(123.0)
    snap = SystemSensors(fakesys.pi5(tmp_path, temp_c=52.5, throttled="80008"), clock).read()
    assert snap.t == 123.0
    assert snap.board == "raspberry-pi-5"
    assert snap.cpu_temp_c == 52.5
    assert snap.zones == {"cpu-thermal": 52.5}
    assert snap.throttle == ThrottleFlags(0x80008)
    assert snap.throttle.soft_temp_limit and snap.throttle.occurred
    assert (snap.mem_total, snap.mem_available) == (8048 * MIB, 7100 * MIB)
    assert (snap.swap_total, snap.swap_used) == (512 * MIB, 0)
    # systemd's service cgroup without a MemoryMax=: usage known, no limit.
    assert snap.cgroup_limit is None
    assert snap.cgroup_current == 250 * MIB
    assert snap.mem_headroom == 7100 * MIB
    assert snap.jetson_power_mode is None
    assert warnings(logs) == []


def test_pi4_cgroup_v1_limit_and_working_set(tmp_path: Path):
    snap = SystemSensors(fakesys.pi4(tmp_path), FakeClock()).read()
    assert snap.board == "raspberry-pi-4"
    assert snap.cpu_temp_c == 61.3
    assert snap.throttle is not None and snap.throttle.under_voltage and snap.throttle.throttled
    assert snap.cgroup_limit == 1536 * MIB
    # usage 900 MiB of which 100 MiB is inactive page cache the kernel would drop first.
    assert snap.cgroup_current == 800 * MIB
    assert snap.swap_used == 40 * MIB
    assert snap.mem_headroom == min(1200 * MIB, 736 * MIB)


def test_jetson_orin_zones_power_mode_and_bogus_zones(tmp_path: Path, logs: list[dict]):
    sensors = SystemSensors(fakesys.jetson_orin(tmp_path, cpu_c=55.0, tj_c=57.5), FakeClock())
    snap = sensors.read()
    assert snap.board == "jetson-orin"
    # tj-therm is the junction maximum: the hottest CPU/SoC zone. PMIC-Die (a constant 100)
    # is skipped, the offline CV0 zone reads -256 and is left out.
    assert snap.cpu_temp_c == 57.5
    assert set(snap.zones) == {"CPU-therm", "GPU-therm", "SOC0-therm", "tj-therm"}
    assert snap.jetson_power_mode == "7W"
    assert snap.throttle is None
    # Unified memory: what the GPU has mapped is read (and is already out of MemAvailable).
    assert snap.gpu_mem_used == 312 * 1024 * 1024 and snap.mem_available == 5900 * 1024 * 1024
    implausible = [e for e in warnings(logs) if e["event"] == "sensor_implausible"]
    assert len(implausible) == 1 and implausible[0]["zone"] == "CV0-therm"
    sensors.read()
    assert len([e for e in warnings(logs) if e["event"] == "sensor_implausible"]) == 1


def test_jetson_power_mode_falls_back_to_the_default(tmp_path: Path):
    root = fakesys.jetson_orin(tmp_path)
    (root / "var/lib/nvpmodel/status").unlink()
    assert SystemSensors(root, FakeClock()).read().jetson_power_mode == "15W"


def test_cgroup_v1_without_a_limit_is_no_limit(tmp_path: Path):
    # A hybrid host like the one these tests were written on: v1 memory, "unlimited" as 2^63.
    fakesys.x86_bare(tmp_path)
    fakesys.cgroup_v1(tmp_path, "/process_api/bcd2e60d", None, 1400 * MIB, 1000 * MIB)
    snap = SystemSensors(tmp_path, FakeClock()).read()
    assert snap.cgroup_limit is None
    assert snap.cgroup_current == 400 * MIB
    assert snap.mem_headroom == 12000 * MIB


def test_cgroup_v2_container_limit_high_and_headroom(tmp_path: Path):
    root = fakesys.container(tmp_path, max_mb=1024, current_mb=900, inactive_mb=300)
    snap = SystemSensors(root, FakeClock()).read()
    assert snap.board == "generic"
    assert snap.cgroup_limit == 1024 * MIB
    assert snap.cgroup_current == 600 * MIB
    # The host has 50 GB available, but this process may take only 424 MiB more.
    assert snap.mem_available == 50000 * MIB
    assert snap.mem_headroom == 424 * MIB
    (root / "sys/fs/cgroup/memory.high").write_text(f"{800 * MIB}\n")  # read on every call
    assert SystemSensors(root, FakeClock()).read().cgroup_limit == 800 * MIB


def test_cgroup_v2_ancestor_limit_binds(tmp_path: Path):
    fakesys.cgroup_v2(tmp_path, path="/app.slice/edgellm.service", current=100 * MIB)
    fakesys.write(tmp_path, "sys/fs/cgroup/app.slice/memory.max", f"{512 * MIB}\n")
    fakesys.write(tmp_path, "proc/meminfo", fakesys.meminfo(4000, 3000))
    snap = SystemSensors(tmp_path, FakeClock()).read()
    assert snap.cgroup_limit == 512 * MIB
    assert snap.mem_headroom == 412 * MIB


def test_cgroup_path_missing_inside_a_container_uses_the_mount_itself(tmp_path: Path):
    fakesys.container(tmp_path, max_mb=2048, current_mb=100, inactive_mb=0)
    # Without a cgroup namespace the listed path is the host's, absent inside the container.
    fakesys.write(tmp_path, "proc/self/cgroup", "0::/docker/4f1c0a\n")
    assert SystemSensors(tmp_path, FakeClock()).read().cgroup_limit == 2048 * MIB


def test_x86_box_without_sensors_is_all_none_and_warns_once(tmp_path: Path, logs: list[dict]):
    sensors = SystemSensors(fakesys.x86_bare(tmp_path), FakeClock())
    for _ in range(5):
        snap = sensors.read()
    assert snap.cpu_temp_c is None
    assert snap.zones == {"acpitz": 27.8}  # a zone, but not the CPU's
    assert snap.throttle is None and snap.jetson_power_mode is None
    assert snap.cgroup_limit is None and snap.cgroup_current is None
    assert snap.mem_headroom == 12000 * MIB
    assert [e["event"] for e in warnings(logs)] == ["sensors_missing"]
    assert warnings(logs)[0]["missing"] == ["cpu_temperature"]


def test_empty_root_never_raises(tmp_path: Path, logs: list[dict]):
    snap = SystemSensors(tmp_path, FakeClock()).read()
    assert snap == Snapshot(t=snap.t, board="generic")
    assert snap.mem_headroom is None
    assert warnings(logs)[0]["missing"] == ["cpu_temperature", "meminfo"]


def test_x86_hwmon_coretemp_is_the_cpu(tmp_path: Path):
    fakesys.x86_bare(tmp_path)
    fakesys.write(tmp_path, "sys/class/hwmon/hwmon2/name", "coretemp\n")
    fakesys.write(tmp_path, "sys/class/hwmon/hwmon2/temp1_input", "61000\n")
    fakesys.write(tmp_path, "sys/class/hwmon/hwmon2/temp2_input", "64000\n")
    snap = SystemSensors(tmp_path, FakeClock()).read()
    assert snap.cpu_temp_c == 64.0
    assert snap.zones["coretemp"] == 64.0


def test_a_sensor_that_disappears_is_none_with_one_warning(tmp_path: Path, logs: list[dict]):
    root = fakesys.pi5(tmp_path)
    sensors = SystemSensors(root, FakeClock())
    assert sensors.read().cpu_temp_c == 52.5
    (root / "sys/class/thermal/thermal_zone0/temp").unlink()
    (root / "sys/devices/platform/soc/soc:firmware/get_throttled").write_text("garbage\n")
    for _ in range(3):
        snap = sensors.read()
    assert snap.cpu_temp_c is None and snap.throttle is None
    events = sorted(e["event"] for e in warnings(logs))
    assert events == ["sensor_unparsable", "sensor_unreadable"]
    # Found again once it is back: paths are kept, only the reading failed.
    fakesys.thermal_zone(root, 0, "cpu-thermal", 70.0)
    assert sensors.read().cpu_temp_c == 70.0


def test_pi5_throttle_file_found_under_another_firmware_node(tmp_path: Path):
    fakesys.pi5(tmp_path)
    (tmp_path / "sys/devices/platform/soc/soc:firmware/get_throttled").unlink()
    fakesys.write(
        tmp_path,
        "sys/devices/platform/soc@107c000000/soc@107c000000:firmware/get_throttled",
        "e000e\n",
    )
    snap = SystemSensors(tmp_path, FakeClock()).read()
    assert snap.throttle == ThrottleFlags(0xE000E)


def test_meminfo_without_memavailable_uses_the_old_estimate():
    info = memory.parse_meminfo(
        "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 30 kB\n"
    )
    assert memory.memory_fields(info)["mem_available"] == 150 * 1024


def test_this_machine_reads_without_errors_or_warning_spam(logs: list[dict]):
    sensors = SystemSensors()
    snaps = [sensors.read() for _ in range(3)]
    assert all(isinstance(s.mem_available, int) and s.mem_available > 0 for s in snaps)
    assert all(s.cpu_temp_c is None or 0 < s.cpu_temp_c < 150 for s in snaps)
    assert snaps[0].t <= snaps[-1].t
    assert len(warnings(logs)) <= 1  # at most "sensors_missing", once


def test_throttle_flags_parse_every_spelling():
    flags = ThrottleFlags.parse("throttled=0x50005")
    assert flags == ThrottleFlags.parse("50005") == ThrottleFlags.parse("0x50005\n")
    assert flags.under_voltage and flags.throttled and flags.occurred
    assert not flags.freq_capped and not flags.soft_temp_limit
    assert flags.thermal_now and str(flags) == "0x50005"
    assert not ThrottleFlags(0x50000).thermal_now and ThrottleFlags(0x50000).occurred
    assert not ThrottleFlags(0x2).thermal_now  # a cap alone may be under-voltage


def test_headroom_is_the_tighter_of_host_and_cgroup():
    snap = Snapshot(t=0, mem_available=500, cgroup_limit=1000, cgroup_current=900)
    assert snap.mem_headroom == 100
    assert Snapshot(t=0, mem_available=50, cgroup_limit=1000, cgroup_current=900).mem_headroom == 50
    assert Snapshot(t=0, cgroup_limit=1000, cgroup_current=1200).mem_headroom == 0
    assert Snapshot(t=0, cgroup_limit=1000).mem_headroom is None


# -- replay --------------------------------------------------------------------------------------


def test_replay_returns_the_row_at_or_before_the_elapsed_time():
    clock = FakeClock(500.0)
    sensors = ReplaySensors(TRACE, clock)
    first = sensors.read()  # the trace starts at the first read
    assert (first.t, first.cpu_temp_c, first.throttle) == (500.0, 47.1, ThrottleFlags(0))
    assert first.cgroup_limit is None and first.cgroup_current == 250_000_000
    clock.advance(27.0)  # rows every 5 s: t=25 is the latest at or before 27
    assert sensors.read().cpu_temp_c == 60.9
    clock.advance(145.0 - 27.0)
    hot = sensors.read()
    assert hot.cpu_temp_c == 86.0 and hot.throttle is not None and hot.throttle.thermal_now
    clock.advance(10_000)  # past the end: the last row holds
    last = sensors.read()
    assert last.cpu_temp_c == 42.5 and last.t == clock.t


def test_replay_loops_when_asked():
    clock = FakeClock(0.0)
    sensors = ReplaySensors(TRACE, clock, loop=True)
    sensors.read()
    clock.advance(365.0 + 25.0)  # 73 rows 5 s apart: the period is 365 s
    assert sensors.read().cpu_temp_c == 60.9


def test_replay_reads_json_lines_with_zones_and_nulls(tmp_path: Path):
    trace = tmp_path / "jetson.jsonl"
    rows = [
        {"t": 10, "zones": {"CPU-therm": 50.0, "tj-therm": 52.0}, "mem_available": 4e9},
        {"t": 12, "cpu_temp_c": None, "throttled": 0x8, "cgroup_limit": 1073741824},
    ]
    trace.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    clock = FakeClock(0.0)
    sensors = ReplaySensors(trace, clock)
    snap = sensors.read()
    assert snap.cpu_temp_c == 52.0 and snap.mem_available == 4_000_000_000
    clock.advance(2.0)
    snap = sensors.read()
    assert snap.cpu_temp_c is None and snap.throttle == ThrottleFlags(8)
    assert snap.cgroup_limit == 1 << 30


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("t,cpu_temp_c\n0,40\n5,hot\n", ":3:"),
        ("t,cpu_temp_c\n5,40\n0,41\n", "backwards"),
        ("cpu_temp_c\n40\n", "t is missing"),
        ("t,cpu_temp_c\n", "no rows"),
    ],
)
def test_replay_rejects_a_bad_trace_naming_the_line(tmp_path: Path, text: str, fragment: str):
    trace = tmp_path / "bad.csv"
    trace.write_text(text)
    with pytest.raises(ValueError, match=fragment):
        ReplaySensors(trace, FakeClock())


# -- the thermal model ---------------------------------------------------------------------------


def test_sim_heats_under_busy_threads_and_cools_when_idle():
    clock = FakeClock(0.0)
    sim = SimulatedSensors(clock, mem_available=2048 * MIB)
    idle = sim.read().cpu_temp_c
    assert idle == 35.0  # ambient 25 + the idle rise
    sim.set_load(4, busy=True)
    clock.advance(60)
    assert 60 < sim.read().cpu_temp_c < 75
    clock.advance(120)  # about three minutes at 4 threads: a Pi 5 without a fan is at 85
    hot = sim.read()
    assert 84 < hot.cpu_temp_c < 89
    assert hot.throttle is not None and hot.throttle.thermal_now
    sim.set_load(4, busy=False)
    clock.advance(120)  # cools in two minutes
    cool = sim.read()
    assert cool.cpu_temp_c < 45
    assert cool.throttle is not None and not cool.throttle.thermal_now and cool.throttle.occurred


def test_sim_fewer_threads_settle_cooler():
    temps = {}
    for threads in (1, 2, 3, 4):
        clock = FakeClock(0.0)
        sim = SimulatedSensors(clock, mem_available=1)
        sim.set_load(threads, busy=True)
        clock.advance(3600)
        temps[threads] = sim.read().cpu_temp_c
    assert temps[1] < temps[2] < temps[3] < 80 < temps[4]


def test_sim_does_not_depend_on_how_often_it_is_read():
    results = []
    for step in (0.5, 7.0, 60.0):
        clock = FakeClock(0.0)
        sim = SimulatedSensors(clock, mem_available=1)
        sim.set_load(3, busy=True)
        while clock.t < 210:
            clock.advance(step if clock.t + step <= 210 else 210 - clock.t)
            sim.read()
        results.append(sim.read().cpu_temp_c)
    assert max(results) - min(results) < 0.02


def test_sim_load_changes_apply_from_when_they_happen():
    clock_a, clock_b = FakeClock(0.0), FakeClock(0.0)
    polled = SimulatedSensors(clock_a, mem_available=1)
    unread = SimulatedSensors(clock_b, mem_available=1)
    for at, threads, busy in [(0, 4, True), (90, 2, True), (150, 0, False), (200, 3, True)]:
        while clock_a.t < at:
            clock_a.advance(1.0)
            polled.read()
        clock_b.t = at
        polled.set_load(threads, busy)
        unread.set_load(threads, busy)  # never read in between: set_load must integrate
    clock_a.advance(30)
    clock_b.advance(30)
    assert polled.read().cpu_temp_c == pytest.approx(unread.read().cpu_temp_c, abs=0.02)
    assert polled.read().cpu_temp_c > 50


def test_sim_memory_is_fixed_or_the_real_machines(tmp_path: Path):
    fixed = SimulatedSensors(FakeClock(), mem_total=4096 * MIB, mem_available=900 * MIB).read()
    assert (fixed.mem_total, fixed.mem_headroom) == (4096 * MIB, 900 * MIB)
    fakesys.container(tmp_path, max_mb=1024, current_mb=500, inactive_mb=0)
    real = SimulatedSensors(FakeClock(), root=tmp_path).read()
    assert real.mem_available == 50000 * MIB and real.mem_headroom == 524 * MIB


def test_make_sensors_follows_the_config(tmp_path: Path):
    fakesys.pi5(tmp_path)
    clock = FakeClock()
    system = make_sensors(MonitorConfig(sysfs_root=tmp_path), clock=clock)
    assert isinstance(system, SystemSensors) and system.read().board == "raspberry-pi-5"
    replay = make_sensors(MonitorConfig(source="replay", trace=TRACE), clock=clock)
    assert isinstance(replay, ReplaySensors) and replay.read().cpu_temp_c == 47.1
    sim_cfg = MonitorConfig.model_validate(
        {"source": "sim", "sim": {"ambient_c": 30, "idle_rise_c": 0, "mem_available_mb": 64}}
    )
    sim = make_sensors(sim_cfg, clock=clock)
    assert isinstance(sim, SimulatedSensors)
    assert sim.read().cpu_temp_c == 30.0 and sim.read().mem_available == 64 * MIB
