"""Will a model fit this device, and how fast will it be? Pure arithmetic over the device's
readings, the model's facts and the speeds measured or published (no I/O here).

Memory: the weights (the file, mapped) + the KV cache at the context a Home Assistant prompt
needs (HA_CONTEXT tokens, f16) + llama.cpp's compute buffers (COMPUTE_SHARE of the weights, at
least COMPUTE_MIN) + the board's margin, against the memory a model may take now.

Speed: decoding reads every weight once per token (and the KV cache so far), so it goes as
memory bandwidth over bytes per token, plus a fixed cost per layer (llama.cpp runs ~36 graph
nodes a layer, each ending in a barrier of the threads: a third of a 135M model's token here,
a few per cent of a 1B model's); prompt processing is matrix work, ~2 FLOPs per non-embedding
parameter per token, plus attention, which grows with the context (and stops growing at a
sliding window), so it goes as compute over FLOPs per token. One device's rates are taken from
a model measured on it (`edgellm bench`: two prompt lengths part the dense work from
attention, a copy of the model with fewer layers parts the per-layer cost from the bytes) or,
without one, from published figures for its board; another model's speeds are that device's
rates over its own bytes, layers and FLOPs."""

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
N_UBATCH = 512  # llama.cpp evaluates a prompt this many tokens at a time

# Graph nodes per layer of each architecture in llama.cpp (views included), against llama's:
# a layer's fixed cost goes with them. llama and gemma3 counted from llama.cpp's own graph
# (the two models here); the others from its graph builders (qwen2: bias adds; qwen3: q/k
# norms; phi3: fused qkv; granite: residual scales).
NODES_PER_LAYER = {"llama": 36, "qwen2": 39, "qwen3": 40, "gemma3": 45, "phi3": 36, "granite": 38}
# Architectures whose layers mostly attend within a sliding window: (every Nth layer global).
SWA_GLOBAL_EVERY = {"gemma3": 6}


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
    arch: str = "llama"
    q_dim: int = 0  # heads x head size of the queries (0: n_embd)
    swa_window: int = 0  # tokens a sliding-window layer attends to (0: none)

    @property
    def dense_flops(self) -> float:
        """FLOPs per prompt token in the layers' matrices (the embedding is a lookup)."""
        return 2.0 * max(self.params - self.n_vocab * self.n_embd, self.params * 0.1)

    def attention_flops(self, n_prompt: int, start: int = 0) -> float:
        """FLOPs per token of attention, on average over a prompt's tokens start..n_prompt:
        scores and sums (4 per query dimension and cell) over the cells each token's batch
        computes: all earlier tokens, or on a sliding-window layer the window and the batch."""
        q_dim = self.q_dim or self.n_embd
        every = SWA_GLOBAL_EVERY.get(self.arch, 0) if self.swa_window else 0
        local = self.n_layer - self.n_layer // every if every else 0
        full = _mean_cells(start, n_prompt, n_prompt)
        windowed = _mean_cells(start, n_prompt, self.swa_window + N_UBATCH // 2)
        return 4.0 * q_dim * ((self.n_layer - local) * full + local * windowed)

    @property
    def prompt_flops(self) -> float:
        """FLOPs per prompt token of the HA prompt."""
        return self.dense_flops + self.attention_flops(HA_PROMPT_TOKENS)

    @property
    def layer_weight(self) -> float:
        """The fixed cost of one layer against a llama layer's (by llama.cpp's graph nodes)."""
        nodes = NODES_PER_LAYER["llama"]
        return NODES_PER_LAYER.get(self.arch, nodes) / nodes

    def decode_bytes(self, context: int) -> float:
        """Bytes read per generated token with `context` tokens in the cache."""
        return self.size + self.kv_bytes_per_token * context


def _mean_cells(start: int, end: int, reach: int) -> float:
    """The mean over positions start..end of min(p, reach): the cells a token attends to."""

    def total(x: int) -> float:  # the sum of min(p, reach) over 0..x
        return x * x / 2 if x <= reach else reach * reach / 2 + (x - reach) * reach

    return (total(end) - total(start)) / (end - start)


@dataclass(frozen=True)
class Rates:
    """A device's effective memory bandwidth (bytes/s), compute (FLOP/s; attention's apart
    where measured), seconds per layer a token (a llama layer's) and whence."""

    bandwidth: float
    flops: float
    basis: str
    attention_flops: float = 0.0  # 0: at `flops`
    layer_s: float = 0.0

    def prompt_s(self, shape: Shape, n_prompt: int = HA_PROMPT_TOKENS, start: int = 0) -> float:
        """Seconds per token of a prompt's tokens start..n_prompt (those before are cached)."""
        attention = shape.attention_flops(n_prompt, start) / (self.attention_flops or self.flops)
        return shape.dense_flops / self.flops + attention

    def decode_s(self, shape: Shape) -> float:
        """Seconds per generated token, early in a reply."""
        per_layer = shape.n_layer * shape.layer_weight * self.layer_s
        return per_layer + shape.decode_bytes(64) / self.bandwidth


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
    cold_s: float | None = None  # TTFTs measured, or estimated at their own context
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
    """Prompt and decode tok/s, and the TTFTs: HA's prompt from an empty cache, and a new turn
    of WARM_NEW_TOKENS on top of it (each new token attends to the whole prompt before it)."""
    decode_s, prompt_s = rates.decode_s(shape), rates.prompt_s(shape)
    end = HA_PROMPT_TOKENS + WARM_NEW_TOKENS
    return Speeds(
        prompt_tps=1 / prompt_s,
        decode_tps=1 / decode_s,
        basis=f"estimated from {rates.basis}",
        cold_s=HA_PROMPT_TOKENS * prompt_s + decode_s,
        warm_s=WARM_NEW_TOKENS * rates.prompt_s(shape, end, HA_PROMPT_TOKENS) + decode_s,
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
        arch=str(f.get("arch") or "llama"),
        q_dim=int(f.get("q_dim") or 0),
        swa_window=int(f.get("swa_window") or 0),
    )


def measured_speeds(result: dict[str, Any]) -> Speeds:
    """A bench result's speeds. Decode: the layer probe's whole-model figure where it ran (the
    median of many single steps, in turns with the copy: a hiccup of a shared machine moves
    it least), else the thread sweep's best."""
    token_ms = result.get("decode_split", {}).get("token_ms", {}).get("whole")
    decode = 1e3 / token_ms if token_ms else max(float(v) for v in result["decode_tps"].values())
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


def rates_from_bench(shape: Shape, result: dict[str, Any], basis: str) -> Rates:
    """The device's rates from one model's `edgellm bench` result: attention's apart from the
    dense work where the two prompt lengths part them, and the per-layer cost where the bench
    measured a copy with fewer layers (decode_split); else rates_from's arithmetic."""
    speeds = measured_speeds(result)
    plain = rates_from(shape, speeds.prompt_tps, speeds.decode_tps, basis)
    flops, attention = plain.flops, 0.0
    n_ha = int(result.get("ha_prompt_tokens") or HA_PROMPT_TOKENS)
    t_short, t_ha = 1 / float(result["prompt_tps"]["512"]), 1 / speeds.prompt_tps
    a_short, a_ha = shape.attention_flops(512), shape.attention_flops(n_ha)
    if t_ha > t_short and a_ha > a_short:
        attention = (a_ha - a_short) / (t_ha - t_short)
        dense_s = t_short - a_short / attention
        flops, attention = (shape.dense_flops / dense_s, attention) if dense_s > 0 else (flops, 0)
    layer_s = float(result.get("decode_split", {}).get("layer_s") or 0.0)
    weights_s = 1 / speeds.decode_tps - shape.n_layer * shape.layer_weight * layer_s
    if weights_s <= 0:
        layer_s, weights_s = 0.0, 1 / speeds.decode_tps
    return Rates(shape.decode_bytes(64) / weights_s, flops, basis, attention, layer_s)


def split_decode(shape: Shape, kept: int, kept_size: int, full_s: float, kept_s: float) -> float:
    """Seconds per token of one llama-sized layer's fixed cost, from a token's decode time with
    all shape.n_layer layers (full_s) and with the first `kept` alone (kept_s, a file of
    kept_size bytes): the layers' share of the time and of the bytes part the fixed cost from
    the reading (time = layers x fixed + bytes x seconds per byte). 0.0 when the two figures
    do not part them (noise: a negative cost or rate)."""
    dropped = shape.n_layer - kept
    if dropped <= 0 or kept_size >= shape.size:
        return 0.0
    layer_bytes = (shape.size - kept_size) / dropped
    head_bytes = shape.size - shape.n_layer * layer_bytes  # embedding/output, read per token
    per_layer = (full_s - kept_s) / dropped
    per_byte = (full_s - shape.n_layer * per_layer) / head_bytes if head_bytes > 0 else 0.0
    fixed = per_layer - layer_bytes * per_byte
    if per_byte <= 0 or fixed <= 0:
        return 0.0
    return fixed / shape.layer_weight


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
