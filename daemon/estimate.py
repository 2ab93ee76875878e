"""Will a model fit this device, and how fast will it be? Pure arithmetic over the device's
readings, the model's facts and the speeds measured or published (no I/O here).

Memory: the weights (the file, mapped) + the KV cache at the context a Home Assistant prompt
needs (HA_CONTEXT tokens, f16) + llama.cpp's compute buffers (COMPUTE_SHARE of the weights, at
least COMPUTE_MIN) + the board's margin, against the memory a model may take now.

Speed: decoding reads every weight once per token (and the KV cache so far), so it goes as
memory bandwidth over bytes per token; prompt processing is matrix work, ~2 FLOPs per
non-embedding parameter per token plus attention, so it goes as compute over FLOPs per token.
One device's effective bandwidth and compute are taken from a model measured on it (`edgellm
bench`) or, without one, from published figures for its board; another model's speeds are
that device's rates over its own bytes and FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIB = 1 << 20
HA_PROMPT_TOKENS = 4600  # Home Assistant's system prompt and ~25 tools (issue 17's fixture)
HA_CONTEXT = 8192  # that prompt, a conversation's history and an answer
WARM_NEW_TOKENS = 100  # a follow-up call: the tool result and the next user turn
COMPUTE_SHARE = 0.10
COMPUTE_MIN = 64 * MIB
MIN_CONTEXT = 2048  # below this a model is no use for Home Assistant
VOICE_DECODE_MIN = 8.0  # tok/s: well ahead of speech (~3 tokens a second)
VOICE_WARM_TTFT_MAX_S = 1.0  # a spoken follow-up starts within a second
HA_DECODE_MIN = 4.0
HA_WARM_TTFT_MAX_S = 3.0
HA_COLD_TTFT_MAX_S = 120.0  # the first call after a start (HA's prefix is then kept)


@dataclass(frozen=True)
class Shape:
    """What the arithmetic needs of a model."""

    name: str
    size: int  # bytes of the GGUF file
    params: float  # parameters
    n_vocab: int
    n_embd: int
    n_layer: int
    kv_bytes_per_token: int
    n_ctx_train: int
    chat: bool
    tools: bool

    @property
    def prompt_flops(self) -> float:
        """FLOPs per prompt token at the HA prompt's mean context."""
        dense = 2.0 * max(self.params - self.n_vocab * self.n_embd, self.params * 0.1)
        attention = 4.0 * self.n_layer * self.n_embd * (HA_PROMPT_TOKENS / 2)
        return dense + attention

    def decode_bytes(self, context: int) -> float:
        """Bytes read per generated token with `context` tokens in the cache."""
        return self.size + self.kv_bytes_per_token * context


@dataclass(frozen=True)
class Rates:
    """A device's effective memory bandwidth (bytes/s) and compute (FLOP/s), and whence."""

    bandwidth: float
    flops: float
    basis: str


# Published llama.cpp CPU figures (issue 19; docs/MODELS.md): Pi 5, Qwen2.5-0.5B Q4_0, prompt
# ~290 tok/s at 4 threads, decode ~34 tok/s at 2; Pi 4, Llama 3.2 1B Q4_K_M, prompt ~12 tok/s,
# decode ~4.5. Turned into rates by the same arithmetic as a measurement.
_QWEN05_Q4_0 = Shape(
    "qwen2.5-0.5b", 352_000_000, 0.494e9, 151936, 896, 24, 12288, 32768, True, True
)
_LLAMA1B = Shape("llama3.2-1b", 807_694_464, 1.236e9, 128256, 2048, 16, 32768, 131072, True, True)
_PUBLISHED = {
    "raspberry-pi-5": (_QWEN05_Q4_0, 290.0, 34.0, "published Pi 5 figures (Qwen2.5-0.5B Q4_0)"),
    "raspberry-pi-4": (_LLAMA1B, 12.0, 4.5, "published Pi 4 figures (Llama 3.2 1B Q4_K_M)"),
}


def rates_from(shape: Shape, prompt_tps: float, decode_tps: float, basis: str) -> Rates:
    """The device's rates implied by one model's measured (or published) speeds."""
    return Rates(
        bandwidth=decode_tps * shape.decode_bytes(64),
        flops=prompt_tps * shape.prompt_flops,
        basis=basis,
    )


def published_rates(board: str) -> Rates | None:
    entry = _PUBLISHED.get(board)
    return None if entry is None else rates_from(*entry)


@dataclass(frozen=True)
class Speeds:
    prompt_tps: float
    decode_tps: float
    basis: str  # "measured on this device" or "estimated from ..."
    cold_s: float | None = None  # measured TTFTs, where there are some
    warm_s: float | None = None

    @property
    def ttft_cold_s(self) -> float:
        if self.cold_s is not None:
            return self.cold_s
        return HA_PROMPT_TOKENS / self.prompt_tps + 1 / self.decode_tps

    @property
    def ttft_warm_s(self) -> float:
        if self.warm_s is not None:
            return self.warm_s
        return WARM_NEW_TOKENS / self.prompt_tps + 1 / self.decode_tps


def estimate_speeds(shape: Shape, rates: Rates) -> Speeds:
    return Speeds(
        prompt_tps=rates.flops / shape.prompt_flops,
        decode_tps=rates.bandwidth / shape.decode_bytes(64),
        basis=f"estimated from {rates.basis}",
    )


@dataclass(frozen=True)
class Fit:
    verdict: str  # fits / tight / no
    need: int  # bytes at HA_CONTEXT (or the model's own, if smaller)
    context: int  # the context that fits (0: none)
    reason: str


def weights_and_compute(size: int) -> int:
    """Bytes a model of `size` takes before any KV: the weights and llama.cpp's compute buffers."""
    return size + max(COMPUTE_MIN, int(size * COMPUTE_SHARE))


def fit(shape: Shape, mem_available: int | None, margin: int, disk_free: int | None) -> Fit:
    """fits: HA's context with the margin to spare; tight: HA's context only without the margin,
    or a smaller context (>= MIN_CONTEXT); no: not even that, or not on the disk."""
    context = min(HA_CONTEXT, shape.n_ctx_train)
    fixed = weights_and_compute(shape.size)
    need = fixed + shape.kv_bytes_per_token * context
    if disk_free is not None and shape.size > disk_free:
        return Fit(
            "no", need, 0, f"the file ({shape.size // MIB} MiB) is larger than the free disk"
        )
    if mem_available is None:
        return Fit("tight", need, context, "memory unknown: no reading of available memory")
    if need + margin <= mem_available:
        return Fit("fits", need, context, f"needs {need // MIB} MiB of {mem_available // MIB}")
    room = mem_available - fixed
    smaller = min(context, room // shape.kv_bytes_per_token) if room > 0 else 0
    if need <= mem_available or smaller >= MIN_CONTEXT:
        ctx = context if need <= mem_available else int(smaller)
        why = f"needs {need // MIB} MiB of {mem_available // MIB}; context {ctx} at most"
        return Fit("tight", need, ctx, why)
    return Fit("no", need, 0, f"needs {need // MIB} MiB, {mem_available // MIB} MiB available")


def shape_from_bench(name: str, result: dict[str, Any], chat: bool, tools: bool) -> Shape:
    """A model's shape from its stored `edgellm bench` result."""
    f = result["facts"]
    return Shape(
        name=name,
        size=int(result["size"]),
        params=float(f["params"]),
        n_vocab=int(f["n_vocab"]),
        n_embd=int(f["n_embd"]),
        n_layer=int(f["n_layer"]),
        kv_bytes_per_token=int(f["kv_bytes_per_token"]),
        n_ctx_train=int(f["n_ctx_train"]),
        chat=chat,
        tools=tools,
    )


def measured_speeds(result: dict[str, Any]) -> Speeds:
    decode = max(float(v) for v in result["decode_tps"].values())
    prompt = float(result["prompt_tps"]["ha"])
    ttft = result.get("ttft_s", {})
    cold, warm = ttft.get("cold_ha"), ttft.get("warm_ha")
    return Speeds(
        prompt,
        decode,
        "measured on this device (edgellm bench)",
        None if cold is None else float(cold),
        None if warm is None else float(warm),
    )


def swap_shortfall(
    size: int, kv_bytes_per_token: int | None, mem_available: int | None, freed: int, margin: int
) -> str | None:
    """Why a model of `size` bytes cannot replace the loaded one, or None when it can: it needs
    its weights, compute buffers and MIN_CONTEXT tokens of KV (the context then grows as far as
    memory allows), with the board's margin, out of what is available now plus what unloading
    the current model frees. Unknown memory is no reason to refuse."""
    if mem_available is None:
        return None
    need = weights_and_compute(size) + (kv_bytes_per_token or 0) * MIN_CONTEXT
    room = mem_available + freed - margin
    if need <= room:
        return None
    return (
        f"it needs {need // MIB} MiB and {max(room, 0) // MIB} MiB would be free with the "
        f"current model unloaded (available {mem_available // MIB} MiB, the board keeps "
        f"{margin // MIB} MiB)"
    )
