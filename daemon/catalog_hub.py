"""The hub half of the catalog: chat models that suit 2-16 GB boards, on Hugging Face.

Each is pinned to a revision with its size and sha256 (the file's LFS oid) where public
material states them (2026-12: found in public code that pins these files; docs/MODELS.md
names how each was chosen); the one without a pin (SmolLM2 360M) is checked against the hub's
published digest during its download and then pinned locally. Facts are from each model's
config (KV bytes per token: f16, every layer; Gemma 3's sliding-window layers need less)."""

from __future__ import annotations

from daemon.catalog_types import CatalogEntry, Facts, HubSource


def _hub(
    name: str,
    description: str,
    source: HubSource,
    sha256: str | None,
    size: int | None,
    facts: Facts,
) -> CatalogEntry:
    file = source.file.rsplit("/", 1)[-1]
    return CatalogEntry(name, description, file, sha256, size, True, source, facts)


HUB_MODELS: dict[str, CatalogEntry] = {
    "qwen2.5-0.5b": _hub(
        "qwen2.5-0.5b",
        "Qwen2.5 0.5B Instruct, Q4_K_M (469 MiB): tools in its template; a Pi 4's model",
        HubSource(
            "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
            "qwen2.5-0.5b-instruct-q4_k_m.gguf",
            "9217f5db79a29953eb74d5343926648285ec7e67",
        ),
        "74a4da8c9fdbcd15bd1f6d01d621410d31c6fc00986f5eb687824e7b93d7a9db",
        491400032,
        Facts(
            0.49, "Q4_K_M", "apache-2.0", 32768, 24, 2, 64, 896, 151936, tools=True, arch="qwen2"
        ),
    ),
    "qwen2.5-1.5b": _hub(
        "qwen2.5-1.5b",
        "Qwen2.5 1.5B Instruct, Q4_K_M (1.0 GiB): tools; a Pi 5's all-rounder",
        HubSource(
            "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
            "qwen2.5-1.5b-instruct-q4_k_m.gguf",
            "91cad51170dc346986eccefdc2dd33a9da36ead9",
        ),
        "6a1a2eb6d15622bf3c96857206351ba97e1af16c30d7a74ee38970e434e9407e",
        1117320736,
        Facts(
            1.54, "Q4_K_M", "apache-2.0", 32768, 28, 2, 128, 1536, 151936, tools=True, arch="qwen2"
        ),
    ),
    "qwen2.5-3b": _hub(
        "qwen2.5-3b",
        "Qwen2.5 3B Instruct, Q4_K_M (2.0 GiB): tools; Qwen research licence (non-commercial)",
        HubSource(
            "Qwen/Qwen2.5-3B-Instruct-GGUF",
            "qwen2.5-3b-instruct-q4_k_m.gguf",
            "7dabda4d13d513e3e842b20f0d435c732f172cbe",
        ),
        "626b4a6678b86442240e33df819e00132d3ba7dddfe1cdc4fbb18e0a9615c62d",
        2104932768,
        Facts(
            3.09,
            "Q4_K_M",
            "qwen-research",
            32768,
            36,
            2,
            128,
            2048,
            151936,
            tools=True,
            arch="qwen2",
        ),
    ),
    "qwen3-0.6b": _hub(
        "qwen3-0.6b",
        "Qwen3 0.6B, Q8_0 (610 MiB): tools and thinking; strong tool use for its size",
        HubSource(
            "Qwen/Qwen3-0.6B-GGUF",
            "Qwen3-0.6B-Q8_0.gguf",
            "23749fefcc72300e3a2ad315e1317431b06b590a",
        ),
        "9465e63a22add5354d9bb4b99e90117043c7124007664907259bd16d043bb031",
        639446688,
        Facts(
            0.6,
            "Q8_0",
            "apache-2.0",
            40960,
            28,
            8,
            128,
            1024,
            151936,
            tools=True,
            arch="qwen3",
            n_head=16,
        ),
    ),
    "qwen3-1.7b": _hub(
        "qwen3-1.7b",
        "Qwen3 1.7B, Q4_K_M (1.2 GiB): tools and thinking",
        HubSource(
            "ggml-org/Qwen3-1.7B-GGUF",
            "Qwen3-1.7B-Q4_K_M.gguf",
            "daeb8e2d528a760970442092f6bf1e55c3b659eb",
        ),
        "d2387ca2dbfee2ffabce7120d3770dadca0b293052bc2f0e138fdc940d9bc7b5",
        1282439264,
        Facts(
            1.7,
            "Q4_K_M",
            "apache-2.0",
            40960,
            28,
            8,
            128,
            2048,
            151936,
            tools=True,
            arch="qwen3",
            n_head=16,
        ),
    ),
    "qwen3-4b": _hub(
        "qwen3-4b",
        "Qwen3 4B, Q4_K_M (2.3 GiB): tools and thinking; 8 GB boards and Jetson",
        HubSource(
            "Qwen/Qwen3-4B-GGUF", "Qwen3-4B-Q4_K_M.gguf", "bc640142c66e1fdd12af0bd68f40445458f3869b"
        ),
        "7485fe6f11af29433bc51cab58009521f205840f5b4ae3a32fa7f92e8534fdf5",
        2497280256,
        Facts(
            4.0,
            "Q4_K_M",
            "apache-2.0",
            40960,
            36,
            8,
            128,
            2560,
            151936,
            tools=True,
            arch="qwen3",
            n_head=32,
        ),
    ),
    "llama3.2-1b": _hub(
        "llama3.2-1b",
        "Llama 3.2 1B Instruct, Q4_K_M (770 MiB): tools (weak at 1B); Llama 3.2 licence",
        HubSource(
            "bartowski/Llama-3.2-1B-Instruct-GGUF",
            "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
            "067b946cf014b7c697f3654f621d577a3e3afd1c",
        ),
        "6f85a640a97cf2bf5b8e764087b1e83da0fdb51d7c9fab7d0fece9385611df83",
        807694464,
        Facts(1.24, "Q4_K_M", "llama3.2", 131072, 16, 8, 64, 2048, 128256, tools=True),
    ),
    "llama3.2-3b": _hub(
        "llama3.2-3b",
        "Llama 3.2 3B Instruct, Q4_K_M (1.9 GiB): tools; Llama 3.2 licence",
        HubSource(
            "bartowski/Llama-3.2-3B-Instruct-GGUF",
            "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
            "5ab33fa94d1d04e903623ae72c95d1696f09f9e8",
        ),
        "6c1a2b41161032677be168d354123594c0e6e67d2b9227c84f296ad037c728ff",
        2019377696,
        Facts(3.21, "Q4_K_M", "llama3.2", 131072, 28, 8, 128, 3072, 128256, tools=True),
    ),
    "gemma3-1b": _hub(
        "gemma3-1b",
        "Gemma 3 1B instruct, Q4_K_M (769 MiB): chat, no tools in its template; Gemma terms",
        HubSource(
            "ggml-org/gemma-3-1b-it-GGUF",
            "gemma-3-1b-it-Q4_K_M.gguf",
            "f9c28bcd85737ffc5aef028638d3341d49869c27",
        ),
        "8ccc5cd1f1b3602548715ae25a66ed73fd5dc68a210412eea643eb20eb75a135",
        806058240,
        Facts(
            1.0,
            "Q4_K_M",
            "gemma",
            32768,
            26,
            1,
            256,
            1152,
            262144,
            tools=False,
            arch="gemma3",
            n_head=4,
            swa_window=512,
        ),
    ),
    "gemma3-4b": _hub(
        "gemma3-4b",
        "Gemma 3 4B instruct, Q4_K_M (2.3 GiB): chat, no tools in its template; Gemma terms",
        HubSource(
            "ggml-org/gemma-3-4b-it-GGUF",
            "gemma-3-4b-it-Q4_K_M.gguf",
            "d0976223747697cb51e056d85c532013931fe52e",
        ),
        "882e8d2db44dc554fb0ea5077cb7e4bc49e7342a1f0da57901c0802ea21a0863",
        2489757856,
        Facts(
            3.88,
            "Q4_K_M",
            "gemma",
            131072,
            34,
            4,
            256,
            2560,
            262208,
            tools=False,
            arch="gemma3",
            n_head=8,
            swa_window=1024,
        ),
    ),
    "smollm2-360m": _hub(
        "smollm2-360m",
        "SmolLM2 360M Instruct, Q8_0 (~370 MiB): chat, no tools; checked by the hub's digest",
        HubSource(
            "HuggingFaceTB/SmolLM2-360M-Instruct-GGUF", "smollm2-360m-instruct-q8_0.gguf", "main"
        ),
        None,
        None,
        Facts(0.36, "Q8_0", "apache-2.0", 8192, 32, 5, 64, 960, 49152, tools=False),
    ),
    "smollm2-1.7b": _hub(
        "smollm2-1.7b",
        "SmolLM2 1.7B Instruct, Q4_K_M (1.0 GiB): chat, no tools",
        HubSource(
            "HuggingFaceTB/SmolLM2-1.7B-Instruct-GGUF",
            "smollm2-1.7b-instruct-q4_k_m.gguf",
            "2d4a76a30b4af41ecd395c35725ac11688d4cfe4",
        ),
        "decd2598bc2c8ed08c19adc3c8fdd461ee19ed5708679d1c54ef54a5a30d4f33",
        1055609536,
        Facts(1.71, "Q4_K_M", "apache-2.0", 8192, 24, 32, 64, 2048, 49152, tools=False),
    ),
    "phi4-mini": _hub(
        "phi4-mini",
        "Phi-4 mini instruct 3.8B, Q4_K_M (2.3 GiB): tools; MIT",
        HubSource(
            "bartowski/microsoft_Phi-4-mini-instruct-GGUF",
            "microsoft_Phi-4-mini-instruct-Q4_K_M.gguf",
            "7ff82c2aaa4dde30121698a973765f39be5288c0",
        ),
        "01999f17c39cc3074afae5e9c539bc82d45f2dd7faa3917c66cbef76fce8c0c2",
        2491874688,
        Facts(3.84, "Q4_K_M", "mit", 131072, 32, 8, 128, 3072, 200064, tools=True, arch="phi3"),
    ),
    "granite3.3-2b": _hub(
        "granite3.3-2b",
        "Granite 3.3 2B Instruct, Q4_K_M (1.4 GiB): tools; Apache 2.0",
        HubSource(
            "ibm-granite/granite-3.3-2b-instruct-GGUF",
            "granite-3.3-2b-instruct-Q4_K_M.gguf",
            "7cdf86ccd1f1bb3491c9b7017b033f2e51367397",
        ),
        "ac71e9e32c0bea919b409c5918f69ca74339854b0319c5065e4e9fb6d95c4852",
        1545303328,
        Facts(
            2.5, "Q4_K_M", "apache-2.0", 131072, 40, 8, 64, 2048, 49159, tools=True, arch="granite"
        ),
    ),
}
