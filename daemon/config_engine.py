"""Config sections of the engine: the model and how it runs, and each request's defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from daemon.config_base import Section as _Section


class ModelConfig(_Section):
    name: str = Field(
        "smollm2-135m",
        min_length=1,
        description="Catalog name, local path, https URL or hf:owner/repo/file.gguf.",
    )
    dir: Path | None = Field(None, description="Where models live; default the XDG data dir.")
    n_ctx: int | None = Field(
        None, ge=128, le=131072, description="Context length; None: the model's, as memory allows."
    )
    n_threads: int | None = Field(
        None, ge=1, le=256, description="Generation threads; default the physical core count."
    )
    n_threads_batch: int | None = Field(
        None, ge=1, le=256, description="Prompt-processing threads; None: the sweep's."
    )
    n_batch: int = Field(256, ge=8, le=8192, description="Prompt-processing batch size.")
    kv_type: Literal["f16", "q8_0"] = Field("f16", description="KV cache type (q8_0: half).")
    flash_attn: bool = Field(False, description="llama.cpp's flash attention.")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to a GPU (-1: all).")
    chat_template: str | None = Field(
        None, description="Jinja chat template overriding the model's own."
    )
    cpu_repack: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Repack weights for the CPU's fastest kernels (llama.cpp's extra buffer "
        "types: AMX, aarch64). auto: probe once in a child process, fall back to off if it dies.",
    )


class GenerationConfig(_Section):
    """Defaults for each request's sampling settings; a request may override them."""

    max_tokens: int = Field(256, ge=1, description="Tokens to generate when a request says none.")
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, ge=0.0, le=5.0)
    system: str | None = Field(None, description="System prompt used when a request has none.")
    stream_interval_ms: int = Field(
        40,
        ge=0,
        le=5000,
        description="Streamed tokens: at most one delta message per this many ms (the tokens "
        "between are joined; the first goes at once); 0: one per token.",
    )
    tool_prompt: Literal["compact", "json"] = Field(
        "compact", description="Tools for a template without any: a line each, or JSON."
    )
