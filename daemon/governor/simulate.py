"""`edgellm simulate`: the governor's policy run against a trace or the thermal model, on a
virtual clock, drawn as a PNG of temperature, threads, context length and tokens/s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon.config import Config
from daemon.governor import boards
from daemon.governor.policy import Limits, ModelFacts, ctx_max_of, decide
from daemon.governor.replay import ReplaySensors
from daemon.governor.snapshot import LoadAware, SensorSource, Snapshot
from daemon.governor.sources import make_sensors

# SmolLM2-135M's KV cache (f16): 30 layers x 3 KV heads x (64 + 64) x 2 bytes.
_DEFAULT_KV_PER_TOKEN = 23040


@dataclass(frozen=True)
class Row:
    t: float
    cpu_temp_c: float | None
    threads: int
    n_ctx: int
    admit: bool
    busy: bool
    tokens_per_s: float
    reason: str


@dataclass(frozen=True)
class Workload:
    """A repeating busy/idle pattern, and how decode speed scales with threads."""

    period_s: float = 60.0
    duty: float = 0.8
    tps_one_thread: float = 40.0
    # Decode is memory-bound: each extra thread adds less; llama.cpp scales ~n^0.8 on small SoCs.
    scaling: float = 0.8
    throttle_factor: float = 0.6

    def busy(self, t: float) -> bool:
        return (t % self.period_s) < self.duty * self.period_s

    def tokens_per_s(self, threads: int, snap: Snapshot) -> float:
        tps = self.tps_one_thread * threads**self.scaling
        if snap.throttle is not None and snap.throttle.slowed_now:
            tps *= self.throttle_factor
        return tps


def simulate(
    cfg: Config,
    duration_s: float,
    step_s: float = 1.0,
    workload: Workload | None = None,
    trace: Path | None = None,
    facts: ModelFacts | None = None,
    start_threads: int | None = None,
) -> list[Row]:
    """Step the policy over duration_s of virtual time; return what it did at each step."""
    workload = workload or Workload()
    clock = _Clock()
    sensors: SensorSource
    if trace is not None:
        sensors = ReplaySensors(trace, clock)
    else:
        # simulate() never reads this machine's own sensors: `system` means the thermal model.
        monitor = cfg.monitor
        if monitor.source == "system":
            monitor = monitor.model_copy(update={"source": "sim"})
        sensors = make_sensors(monitor, clock=clock)
    profile = boards.detect(cfg.monitor.sysfs_root)
    gcfg = boards.resolve(cfg.governor, profile, n_ctx=ctx_max_of(cfg))
    ceiling = start_threads or gcfg.max_threads or profile.max_threads or 4
    facts = facts or ModelFacts(
        kv_bytes_per_token=_DEFAULT_KV_PER_TOKEN,
        n_ctx_train=8192,
        thread_ceiling=ceiling,
        min_threads=gcfg.min_threads,
    )
    n_ctx = min(ctx_max_of(cfg), facts.n_ctx_train or ctx_max_of(cfg))
    limits = Limits(threads=facts.thread_ceiling, n_ctx=n_ctx, admit=True)
    history: list[Snapshot] = []
    rows: list[Row] = []
    while clock.now <= duration_s:
        busy = workload.busy(clock.now)
        if isinstance(sensors, LoadAware):
            sensors.set_load(limits.threads, busy)
        snap = sensors.read()
        history = [*history[-119:], snap]
        decision = decide(history, limits, gcfg, facts, clock.now)
        limits = decision.limits
        tps = workload.tokens_per_s(limits.threads, snap) if busy and limits.admit else 0.0
        rows.append(
            Row(
                clock.now,
                snap.cpu_temp_c,
                limits.threads,
                limits.n_ctx,
                limits.admit,
                busy,
                tps,
                decision.reason if decision.changed else "",
            )
        )
        clock.now += step_s
    return rows


class _Clock:
    """A virtual monotonic clock the sensors read; simulate() moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def draw(
    rows: list[Row], out: Path, soft_c: float | None = None, hard_c: float | None = None
) -> Path:
    """Four stacked plots over time: temperature, threads, context length, tokens/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    t = [r.t / 60 for r in rows]
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(9, 9))
    axes[0].plot(
        t,
        [r.cpu_temp_c if r.cpu_temp_c is not None else float("nan") for r in rows],
        color="tab:red",
    )
    for level, style in ((soft_c, "--"), (hard_c, ":")):
        if level is not None:
            axes[0].axhline(level, color="grey", linestyle=style, linewidth=1)
    axes[0].set_ylabel("CPU °C")
    axes[1].step(t, [r.threads for r in rows], where="post", color="tab:blue")
    axes[1].set_ylabel("threads")
    axes[1].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].step(t, [r.n_ctx for r in rows], where="post", color="tab:green")
    axes[2].set_ylabel("n_ctx")
    axes[3].plot(t, [r.tokens_per_s for r in rows], color="tab:purple", linewidth=0.8)
    axes[3].set_ylabel("tokens/s")
    axes[3].set_xlabel("minutes")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("edgellm governor simulation")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
