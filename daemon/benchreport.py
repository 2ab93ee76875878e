"""What `edgellm bench` shows people: a few lines of text, and a PNG of every model benched on
this device (matplotlib, when it is installed: `pip install edgellm[sim]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def format_table(key: str, r: dict[str, Any], warm_tokens: int) -> str:
    """A few lines for people."""
    m, f, t, ttft, tps = r["machine"], r["facts"], r["temp_c"], r["ttft_s"], r["prompt_tps"]
    repack = f"{'on' if r['load']['repack'] else 'off'} ({r['load']['repack_source']})"
    decode = "  ".join(f"{n}: {v:.1f}" for n, v in r["decode_tps"].items())
    temp = "no sensor" if t["before"] is None else f"{t['before']} -> {t['after']} °C"
    lines = [
        f"{key}: {f['params'] / 1e6:.0f} M params, {r['size'] / 2**20:.0f} MiB, "
        f"n_ctx_train {f['n_ctx_train']}, KV {f['kv_bytes_per_token']} B/token",
        f"machine: {m['cpu']}, {m['usable_cores']} cores, board {m['board']}, "
        f"llama-cpp-python {m['llama_cpp_python']}, repack {repack}",
        f"prompt tok/s ({m['prompt_threads']} threads): 512 tokens {tps['512']:.1f}, "
        f"{r['ha_prompt_tokens']} (HA) {tps['ha']:.1f}",
        f"TTFT HA: cold {ttft['cold_ha']:.3f} s, warm (+{warm_tokens}) {ttft['warm_ha']:.3f} s",
        f"decode tok/s by threads: {decode}  (best {r['best_threads']})",
        *_split_line(r.get("decode_split") or {}),
        f"peak RSS {r['peak_rss_mib']} MiB; temperature {temp}",
    ]
    return "\n".join(lines)


def _split_line(split: dict[str, Any]) -> list[str]:
    """The layer probe's figures, or why it did not run."""
    if "skipped" in split:
        return [f"layer probe: skipped ({split['skipped']})"]
    if not split:
        return []
    ms = split["token_ms"]
    return [
        f"decode step ({split['threads']} threads, median): {1e3 / ms['whole']:.1f} tok/s; "
        f"with {split['kept_layers']} layers {1e3 / ms['kept']:.1f}: fixed cost "
        f"{split['layer_s'] * 1e3:.3f} ms a llama-sized layer"
    ]


def draw(results: dict[str, Any], out: Path) -> Path:
    """Decode tok/s by thread count, and prompt tok/s at 512 tokens and at HA's size, one colour
    per model. Raises RuntimeError when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError as err:
        raise RuntimeError("drawing needs matplotlib: pip install 'edgellm[sim]'") from err
    fig, (decode, prompt) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = sorted(results)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        r = results[name]
        threads = sorted(int(n) for n in r["decode_tps"])
        decode.plot(threads, [r["decode_tps"][str(n)] for n in threads], marker="o", label=name)
        tps = [r["prompt_tps"]["512"], r["prompt_tps"]["ha"]]
        prompt.bar([x + i * width for x in (0, 1)], tps, width, label=name)
    decode.set(title="decode", xlabel="threads", ylabel="tokens/s")
    decode.set_ylim(bottom=0)
    decode.xaxis.set_major_locator(MaxNLocator(integer=True))
    prompt.set(title="prompt processing", ylabel="tokens/s")
    prompt.set_xticks([x + width * (len(names) - 1) / 2 for x in (0, 1)], ["512 tokens", "HA"])
    for ax in (decode, prompt):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    first = results[names[0]]["machine"] if names else {}
    fig.suptitle(f"edgellm bench: {first.get('cpu', '?')}, {first.get('board', '?')}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
