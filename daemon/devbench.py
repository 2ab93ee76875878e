"""`edgellm bench`: how fast a model runs on this device, measured in-process and remembered.

Loads MODEL here and measures prompt tok/s (512 tokens, and an HA-sized prompt: Home Assistant's
Assist prompt with entities and tools is ~4,600 tokens), decode tok/s at each thread count, TTFT
cold (the HA prompt uncached) and warm (cached, under a new turn), peak RSS and temperature rise;
stores them in the state directory's bench.json (one entry per model) for advise, the status
message and the HA sensors. Stop the daemon first: a busy core slows every multi-thread step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon import benchreport, benchwatch, layersplit
from daemon.catalog import DEFAULT_MODEL

VERSION = 1
FILE_NAME = "bench.json"
SHORT_PROMPT = 512
HA_PROMPT = 4600  # Home Assistant's Assist prompt with ~60 exposed entities and its tools
WARM_TOKENS = 100  # a new user turn on top of the cached HA prompt
DECODE_PROMPT = 32  # tokens in the cache before a decode sample

# Varied sentences about a home, repeated and numbered: text a tokenizer treats as prose.
SENTENCES = (
    "The kitchen light is on and the living room lamp is dimmed to forty percent.",
    "Outside it is eleven degrees with a light wind from the west.",
    "The front door is locked, the garage door is closed and the alarm is armed.",
    "The thermostat in the hallway is set to twenty-one degrees until ten tonight.",
    "The solar panels have produced four kilowatt hours since sunrise.",
)
QUESTIONS = ("Could you turn off every light downstairs and lower the heating a little?",)


@dataclass(frozen=True)
class Sizes:
    """How much to measure: prompt lengths, decode tokens, repeats, the thread ceiling."""

    ha_tokens: int = HA_PROMPT
    decode_tokens: int = 64
    repeats: int = 3
    threads: int = 1


def add_parser(sub: Any) -> None:
    """The `bench` subcommand's arguments."""
    p = sub.add_parser("bench", help="measure a model's speed on this device", description=__doc__)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model spec ({DEFAULT_MODEL})")
    p.add_argument("-m", "--models-dir", type=Path, help="models directory")
    p.add_argument("--threads", type=_count, metavar="N", help="most threads swept (all usable)")
    p.add_argument("--ha-tokens", type=_count, metavar="N", default=HA_PROMPT, help="(4600)")
    p.add_argument("--decode-tokens", type=_count, metavar="N", default=64, help="per sample (64)")
    p.add_argument("--repeats", type=_count, metavar="N", default=3, help="median of N (3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--png", type=Path, metavar="FILE", help="draw every model benched here")


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def main(args: argparse.Namespace) -> int:
    """Run `edgellm bench`: measure, store, print."""
    from daemon import cpus, logsetup
    from daemon.engine.cpuprobe import CpuUnsupported

    logsetup.configure("error", "console")  # a box without thermal zones is not news here
    sizes = Sizes(args.ha_tokens, args.decode_tokens, args.repeats, args.threads or cpus.usable())
    try:
        key, result = run(args.model, args.models_dir, sizes)
    except CpuUnsupported as err:
        print(f"edgellm: {err}", file=sys.stderr)
        return 5
    if args.json:
        print(json.dumps({key: result}, indent=1))
    else:
        print(benchreport.format_table(key, result, WARM_TOKENS))
        print(f"stored in {results_path()}")
    if args.png is not None:
        print(f"drawn in {benchreport.draw(load_results(), args.png)}")
    return 0


def run(spec: str, models_dir: Path | None, sizes: Sizes) -> tuple[str, dict[str, Any]]:
    """Measure one installed model and store the result; (its key, the result)."""
    from daemon import models

    path = models.locate(spec, models_dir)  # ModelError names `edgellm model fetch` when absent
    key = spec if spec in models.CATALOG else path.name
    repack, how = repack_verdict(path)
    temp_before = benchwatch.read_temp()
    llm = load(path, repack, sizes)
    try:
        with benchwatch.PeakRss() as rss:  # the model's, before the layer probe's copy joins it
            timings, facts, n_batch = measure(llm, sizes), model_facts(llm), llm.n_batch
            temp_after = benchwatch.read_temp()
        split = layersplit.measure(
            path,
            llm,
            facts,
            timings["decode_tps"],
            lambda copy: load(copy, repack, sizes),
            prompt_tokens(llm, DECODE_PROMPT, SENTENCES, bos=True),  # the sweep's decode prompt
            sizes,
        )
    finally:
        llm.close()
    result = {
        "model": key,
        "file": str(path),
        "size": path.stat().st_size,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(timings.pop("prompt_threads")),
        "load": {"repack": repack, "repack_source": how, "n_batch": n_batch},
        "facts": facts,
        **timings,
        "decode_split": split,
        "peak_rss_mib": round(rss.peak / 2**20, 1),
        "temp_c": benchwatch.temperatures(temp_before, temp_after),
    }
    store(key, result)
    return key, result


def repack_verdict(path: Path) -> tuple[bool, str]:
    """Weight repacking as the daemon would load: the CPU probe's stored verdict for this
    build, CPU and model, else off (always safe; the probe itself is `edgellm doctor`)."""
    from daemon.engine import cpuprobe

    cache = cpuprobe.VerdictCache(cpuprobe.state_dir() / cpuprobe.CACHE_NAME)
    entry = cache.get(cpuprobe.identity(path))
    if entry is None:
        return False, "no stored CPU-probe verdict: `edgellm doctor` makes one"
    if entry.get("unsupported"):
        raise cpuprobe.CpuUnsupported(cpuprobe.unsupported_text(entry.get("modes", {})))
    return bool(entry["repack"]), "stored CPU-probe verdict"


def load(path: Path, repack: bool, sizes: Sizes) -> Any:
    """The model with a context for the longest test, on the daemon's default batch size."""
    from daemon.config import ModelConfig
    from daemon.engine import llama_compat

    n_ctx = max(SHORT_PROMPT, sizes.ha_tokens + WARM_TOKENS, DECODE_PROMPT + sizes.decode_tokens)
    llm = llama_compat.load_llama(
        str(path),
        repack=repack,
        n_ctx=n_ctx + 16,
        n_batch=ModelConfig().n_batch,
        n_threads=sizes.threads,
        n_threads_batch=sizes.threads,
        verbose=False,
    )
    llama_compat.check_internals(llm)
    return llm


def measure(llm: Any, sizes: Sizes) -> dict[str, Any]:
    """Every timed figure of one loaded model: the thread sweeps first, as the daemon runs
    them (decode, then prefill), then the prompts on the fastest prefill count."""
    from daemon.engine import llama_compat

    ha = prompt_tokens(llm, sizes.ha_tokens, SENTENCES, bos=True)
    short = prompt_tokens(llm, SHORT_PROMPT, SENTENCES, bos=True)
    extra = prompt_tokens(llm, WARM_TOKENS, QUESTIONS, bos=False)
    decode_sweep, prefill_sweep = thread_sweeps(llm, short[:DECODE_PROMPT], sizes)
    decode, prefill = medians(decode_sweep), medians(prefill_sweep)
    llama_compat.set_threads(llm, best_threads(decode), best_threads(prefill))
    short_s = [prefill_seconds(llm, short) for _ in range(sizes.repeats)]
    ha_runs = [ha_timings(llm, ha, extra) for _ in range(sizes.repeats)]
    ha_s, cold, warm = (statistics.median(col) for col in zip(*ha_runs, strict=True))
    short_tps, ha_tps = SHORT_PROMPT / statistics.median(short_s), len(ha) / ha_s
    return {
        "prompt_tps": {"512": round(short_tps, 2), "ha": round(ha_tps, 2)},
        "ha_prompt_tokens": len(ha),
        "prompt_threads": best_threads(prefill),
        "prefill_sweep_tps": {str(n): round(tps, 2) for n, tps in prefill.items()},
        "decode_tps": {str(n): round(tps, 2) for n, tps in decode.items()},
        "contended_samples": decode_sweep.contended + prefill_sweep.contended,
        "best_threads": best_threads(decode),
        "ttft_s": {"cold_ha": round(cold, 4), "warm_ha": round(warm, 4)},
    }


def prompt_tokens(llm: Any, n: int, sentences: tuple[str, ...], bos: bool) -> list[int]:
    """Exactly n tokens of numbered sentences (each is 15 words or so: n // 4 + 1 are plenty)."""
    text = " ".join(f"({i}) {sentences[i % len(sentences)]}" for i in range(n // 4 + 1))
    return list(llm.tokenize(text.encode("utf-8"), add_bos=bos))[:n]


def prefill_seconds(llm: Any, tokens: list[int]) -> float:
    """Seconds to evaluate tokens on an empty KV cache (eval() drops cells past n_tokens)."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(tokens)
    return time.perf_counter() - t0


def ha_timings(llm: Any, ha: list[int], extra: list[int]) -> tuple[float, float, float]:
    """(seconds to evaluate the HA prompt, TTFT cold, TTFT warm). Cold: from an empty cache
    to the first sampled token. Warm: the HA prompt cached, the new turn (`extra`) alone is
    evaluated, as the daemon's prefix match does for a conversation's next request."""
    prefill = prefill_seconds(llm, ha)
    t0 = time.perf_counter()
    _first_token(llm, ha)  # the whole prompt is cached: a sample from the logits eval left
    t1 = time.perf_counter()
    _first_token(llm, ha + extra)
    return prefill, prefill + t1 - t0, time.perf_counter() - t1


def _first_token(llm: Any, tokens: list[int]) -> int:
    """Greedy-sample one token after tokens (generate()'s prefix match skips what is cached)."""
    from daemon.engine import llama_compat

    gen = llm.generate(tokens, temp=0.0)
    try:
        return int(next(gen))
    finally:
        gen.close()  # the sampled token is never evaluated: the cache holds tokens only
        llama_compat.release_sampler(llm)


def thread_sweeps(llm: Any, prompt: list[int], sizes: Sizes) -> tuple[Any, Any]:
    """The decode sweep, then the prefill sweep (a prompt may gain from more cores than decode
    does, and loses more to a busy core), as the daemon runs them (engine/sweep.py)."""
    from daemon.engine.sweep import measure_prefill, measure_slice, prefill_tokens

    def decode_sample(n: int) -> tuple[float, float | None] | None:
        llm.reset()  # each sample decodes after the same short prompt
        return measure_slice(llm, prompt, n, _idle, _busy, sizes.decode_tokens, math.inf)

    decode = sweep(decode_sample, sizes)
    tokens = prefill_tokens(max(medians(decode).values()))
    return decode, sweep(lambda n: measure_prefill(llm, prompt, n, _idle, _busy, tokens), sizes)


def medians(sweeper: Any) -> dict[int, float]:
    """Each thread count's median tok/s."""
    return {n: statistics.median(s) for n, s in sweeper.samples.items() if s}


def sweep(sample: Callable[[int], tuple[float, float | None] | None], sizes: Sizes) -> Any:
    """The daemon's sweep plan over 1..sizes.threads: counts interleaved over the repeats, a
    collapsed sample measured again, a tie that costs a core confirmed; the Sweeper."""
    from daemon.engine.sweep import CONTENDED_CORES, Sweeper

    sweeper = Sweeper(list(range(1, sizes.threads + 1)), rounds=sizes.repeats)
    while (n := sweeper.next_count()) is not None:
        taken = sample(n)
        assert taken is not None  # never abandoned
        tps, others = taken
        sweeper.record(n, tps, contended=others is not None and others >= CONTENDED_CORES)
    return sweeper


def _idle() -> None:  # no heartbeat to give: nothing watches this process
    return None


def _busy() -> bool:  # no job ever waits: a sample is never abandoned
    return False


def best_threads(tokens_per_s: dict[int, float]) -> int:
    """The fewest threads within the sweep's NEAR_BEST of the fastest count (cooler, a core
    to spare), as the daemon chooses."""
    from daemon.engine.sweep import NEAR_BEST

    top = max(tokens_per_s.values())
    return min(n for n, tps in tokens_per_s.items() if tps >= NEAR_BEST * top)


def model_facts(llm: Any) -> dict[str, Any]:
    """What the loaded model is: its size in parameters, shape and KV-cache cost."""
    import llama_cpp

    from daemon.engine import llama_compat
    from daemon.governor.policy import kv_bytes_per_token

    metadata = dict(llm.metadata)
    try:
        kv: int | None = kv_bytes_per_token(metadata, "f16", "f16")
    except ValueError:  # a recurrent or per-layer model the formula does not describe
        kv = None
    arch = metadata.get("general.architecture", "")
    layers = metadata.get(f"{arch}.block_count", "")
    heads, key_size = (
        metadata.get(f"{arch}.attention.head_count", ""),
        metadata.get(f"{arch}.attention.key_length", ""),
    )
    window = metadata.get(f"{arch}.attention.sliding_window", "")
    return {
        "params": int(llama_cpp.llama_model_n_params(llm.model)),
        "n_vocab": int(llm.n_vocab()),
        "n_embd": int(llm.n_embd()),
        "n_layer": int(layers) if layers.isdigit() else None,
        "kv_bytes_per_token": kv,
        "n_ctx_train": llama_compat.n_ctx_train(llm),
        "arch": arch,
        "q_dim": int(heads) * int(key_size)
        if heads.isdigit() and key_size.isdigit()
        else None,  # None: n_embd
        "swa_window": int(window) if window.isdigit() else None,
    }


def machine(threads: int) -> dict[str, Any]:
    """The device the figures belong to."""
    from daemon import cpus
    from daemon.engine import cpuprobe, llama_compat
    from daemon.governor import boards

    return {
        "cpu": cpuprobe.cpu_model(),
        "usable_cores": cpus.usable(),
        "board": boards.detect().name,
        "llama_cpp_python": llama_compat.version(),
        "prompt_threads": threads,
    }


def results_path() -> Path:
    """STATE/bench.json (systemd's StateDirectory, else $XDG_STATE_HOME/edgellm)."""
    from daemon.engine.cpuprobe import state_dir

    return state_dir() / FILE_NAME


def load_results(path: Path | None = None) -> dict[str, Any]:
    """Each benchmarked model's result by key (catalog name or file name); {} when there is
    no file or it cannot be read as one of ours."""
    try:
        data = json.loads((path or results_path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return {}
    results = data.get("results")
    return results if isinstance(results, dict) else {}


def store(key: str, result: dict[str, Any], path: Path | None = None) -> Path:
    """Add or replace one model's result, keeping the others; written whole, then renamed."""
    path = path or results_path()
    results = load_results(path)
    results[key] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": VERSION, "results": results}, indent=1), "utf-8")
    os.replace(tmp, path)
    return path
