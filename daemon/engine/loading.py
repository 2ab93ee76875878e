"""Loading a model file into a Llama, and what the loaded model is (ModelInfo)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon import cpus
from daemon.config import ModelConfig
from daemon.engine import llama_compat, tools

AUTO_LOAD_CTX = 2048
KV_TYPES = {"f16": 1, "q8_0": 8}  # ggml's type numbers, as Llama(type_k=...) takes them


@dataclass(frozen=True)
class ModelInfo:
    """What the loaded model is, for the status message, the governor and the logs."""

    name: str
    path: str
    size_bytes: int
    n_ctx: int
    n_ctx_train: int
    n_threads: int
    n_threads_batch: int
    chat: bool
    metadata: dict[str, str]
    tools: bool = False  # the chat template renders tool definitions


def load(
    path: Path, name: str, mcfg: ModelConfig, repack: bool
) -> tuple[Any, ModelInfo, str | None]:
    """The Llama (its internals checked), what it is, and its chat template (None: completion).

    Weight repacking (llama.cpp's extra buffer types) is off unless the CPU probe said it runs
    here (daemon/engine/cpuprobe.py); off is always safe, only slower on some CPUs.
    """
    n_threads = mcfg.n_threads or cpus.default_threads()
    llm = llama_compat.load_llama(
        str(path),
        repack=repack,
        # auto (None): loaded at this, then sized to the model and memory (worker.py)
        n_ctx=mcfg.n_ctx or AUTO_LOAD_CTX,
        n_threads=n_threads,
        # until the sweep measures prefill (engine/tuning.py), it runs on the decode count
        n_threads_batch=mcfg.n_threads_batch or n_threads,
        n_batch=mcfg.n_batch,
        flash_attn=mcfg.flash_attn,
        type_k=KV_TYPES[mcfg.kv_type],
        type_v=KV_TYPES[mcfg.kv_type],
        n_gpu_layers=mcfg.n_gpu_layers,
        verbose=False,
    )
    llama_compat.check_internals(llm)
    llama_compat.check_grammar_after_sampling(llm)  # a grammar costs a check per token
    if mcfg.n_ctx is None:  # auto: the model's own length as far as memory allows
        from daemon.governor.startctx import auto_context

        n_ctx = auto_context(llm.metadata, llama_compat.n_ctx_train(llm), mcfg.kv_type)
        if n_ctx != llm.n_ctx():
            llama_compat.rebuild_context(llm, n_ctx)
    template = mcfg.chat_template or llm.metadata.get("tokenizer.chat_template")
    threads, threads_batch = llama_compat.thread_counts(llm)
    info = ModelInfo(
        name=name,
        path=str(path),
        size_bytes=path.stat().st_size,
        n_ctx=llm.n_ctx(),
        n_ctx_train=llama_compat.n_ctx_train(llm),
        n_threads=threads,
        n_threads_batch=threads_batch,
        chat=template is not None,
        metadata=dict(llm.metadata),
        tools=tools.template_takes_tools(template),
    )
    return llm, info, template
