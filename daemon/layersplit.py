"""`edgellm bench`'s layer probe: how much of a decoded token is a fixed cost per layer and how
much is reading the weights, so that `advise` can scale this device's decode speed to a model
with other layers and bytes (estimate.split_decode does the arithmetic).

The benched model is copied without its last three quarters of layers (llama.cpp's own
quantizer, only copying) next to it on the same disk, loaded beside it, and the two decode in
turns at the thread count that decoded the whole model fastest: a token's time is the median of
many single-token steps, so a slow moment of a shared machine moves neither much. The copy is
deleted whatever happens. Its words mean nothing: only its speed counts.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon import device, estimate
from daemon.downloads import FREE_MARGIN_BYTES
from daemon.governor import memory

KEEP_SHARE = 4  # the copy keeps a quarter of the layers: the most leverage, a short copy
MIN_LAYERS = 4
MEMORY_MARGIN = 256 << 20  # left available with the copy loaded beside the model


def measure(
    path: Path,
    llm: Any,
    facts: dict[str, Any],
    decode_tps: dict[str, float],
    load: Callable[[Path], Any],
    prompt: list[int],
    sizes: Any,
) -> dict[str, Any]:
    """Decode path's model (loaded: llm) and a copy of its first quarter of layers in turns;
    what was measured and layer_s (0.0 when the two do not part the costs), or why nothing
    was. `facts` are the bench's (devbench.model_facts), `decode_tps` its sweep's tok/s by
    thread count, `load` opens a model file as the bench did, `prompt` is what each decode
    follows (the copy has the model's vocabulary); sizes.repeats rounds of sizes.decode_tokens
    steps each, twice over."""
    n_layer = facts.get("n_layer")
    if not n_layer or n_layer < MIN_LAYERS:
        return {"skipped": f"{n_layer} layers: too few to part"}
    size = path.stat().st_size
    free = device.disk_free(path.parent)
    if free is not None and free < size + FREE_MARGIN_BYTES:
        return {"skipped": "no room on the disk for a copy of the model"}
    room = memory.headroom()  # unknown: try
    if room is not None and room <= size + MEMORY_MARGIN:
        return {"skipped": "not enough memory available to load a copy beside the model"}
    threads = int(max(decode_tps.items(), key=lambda kv: kv[1])[0])
    kept = max(1, n_layer // KEEP_SHARE)
    copy = path.with_name(f".{path.stem}.{kept}-layers.{os.getpid()}.gguf")
    from daemon.engine import llama_compat

    try:
        try:
            llama_compat.copy_without_layers(str(path), str(copy), list(range(kept, n_layer)))
            kept_size = copy.stat().st_size
        except (RuntimeError, OSError) as err:  # a models directory this user cannot write
            return {"skipped": f"no copy beside the model: {err}"}
        short = load(copy)
        try:
            full_s, kept_s = [], []
            for _ in range(2 * sizes.repeats):
                full_s.append(token_seconds(llm, prompt, threads, sizes.decode_tokens))
                kept_s.append(token_seconds(short, prompt, threads, sizes.decode_tokens))
        finally:
            short.close()
    finally:
        copy.unlink(missing_ok=True)
    full, short_s = statistics.median(full_s), statistics.median(kept_s)
    shape = estimate.shape_from_bench("benched", {"size": size, "facts": facts}, True, False)
    return {
        "kept_layers": kept,
        "kept_size": kept_size,
        "threads": threads,
        "token_ms": {"whole": round(full * 1e3, 4), "kept": round(short_s * 1e3, 4)},
        "layer_s": estimate.split_decode(shape, kept, kept_size, full, short_s),
    }


def token_seconds(llm: Any, prompt: list[int], threads: int, steps: int) -> float:
    """The median seconds of one single-token decode step of a loaded model at `threads`,
    after `prompt`, over `steps` steps."""
    from daemon.engine import llama_compat

    llama_compat.set_threads(llm, threads)
    llm.reset()
    llm.eval(prompt)
    token = int(llama_compat.cached_tokens(llm)[-1])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        llm.eval([token])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
