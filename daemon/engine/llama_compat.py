"""Every use of llama-cpp-python beyond its public API, each with the version it was tested on.

An upgrade that moves one of these internals fails here, loudly and in one place
(`check_internals`), rather than as an AttributeError deep inside a generation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

# Versions whose internals this module was run against (the test suite, a real model).
TESTED_VERSIONS = ("0.3.36",)

# What each helper below touches; check_internals() proves they are all there.
_LLAMA_ATTRS = (
    "_ctx",
    "_model",
    "_batch",
    "_stack",
    "context_params",
    "n_batch",
    "input_ids",
    "n_tokens",
    "_sampler",
    "_init_sampler",
)
_CTX_ATTRS = ("ctx", "set_n_threads", "close")
_MODEL_ATTRS = ("vocab", "token_get_text", "n_ctx_train", "add_bos_token")


class IncompatibleLlama(RuntimeError):
    """The installed llama-cpp-python lacks an internal edgellm relies on."""


def version() -> str:
    import llama_cpp

    return str(llama_cpp.__version__)


@contextlib.contextmanager
def _model_params_without_repack() -> Iterator[None]:
    """Make Llama() load with use_extra_bufts = False (llama-server's --no-repack).

    0.3.36's Llama() takes no argument for it: it reads llama_model_default_params() through
    the module at call time, so the defaults are patched for the duration of one load. Loads
    happen on one thread (the engine's, or the probe child's main thread).
    """
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def without_repack() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = without_repack
    try:
        yield
    finally:
        lib.llama_model_default_params = original


def load_llama(model_path: str, *, repack: bool, **kwargs: Any) -> Any:
    """Load a Llama, with or without llama.cpp's weight repacking (AMX, aarch64 kernels)."""
    from llama_cpp import Llama

    if repack:
        return Llama(model_path=model_path, **kwargs)
    with _model_params_without_repack():
        return Llama(model_path=model_path, **kwargs)


def check_internals(llm: Any) -> None:
    """Raise IncompatibleLlama naming every internal missing from this llama-cpp-python."""
    import llama_cpp

    missing = [f"Llama.{a}" for a in _LLAMA_ATTRS if not hasattr(llm, a)]
    ctx, model = getattr(llm, "_ctx", None), getattr(llm, "_model", None)
    missing += [f"LlamaContext.{a}" for a in _CTX_ATTRS if not hasattr(ctx, a)]
    missing += [f"LlamaModel.{a}" for a in _MODEL_ATTRS if not hasattr(model, a)]
    for name in ("LlamaContext", "LlamaBatch"):
        if not hasattr(llama_cpp._internals, name):
            missing.append(f"_internals.{name}")
    if not hasattr(llama_cpp.llama_model_default_params(), "use_extra_bufts"):
        missing.append("llama_model_params.use_extra_bufts")
    if missing:
        raise IncompatibleLlama(
            f"llama-cpp-python {version()} lacks {', '.join(missing)}; edgellm was tested with "
            f"{', '.join(TESTED_VERSIONS)}: install one of those"
        )


def release_sampler(llm: Any) -> None:
    """Free the sampler chain the last generate() made, now. Llama keeps it in _sampler until
    the next generate() replaces it, and the replaced one is a reference cycle (its ExitStack's
    callback holds it): its native chain (penalties, grammar) is freed only by a full garbage
    collection, which a long-lived daemon seldom runs. Measured here: +46 MiB RSS over 4,000
    generations without this, flat with it (bench/soak.py). Tested: 0.3.36."""
    sampler, llm._sampler = llm._sampler, None
    if sampler is not None:
        sampler.close()


def check_grammar_after_sampling(llm: Any, on: bool = True) -> None:
    """Make llm apply a request's grammar as llama.cpp's own samplers do: sample, then check the
    one token (checked_sampler.py); on=False gives it back llama-cpp-python's own way (for the
    bench and tests that compare the two). 0.3.36's generate() makes its sampler through
    Llama._init_sampler(..., grammar=...) and then calls only its sample(ctx, idx); this wraps
    that one method on this instance (through a weak reference: no cycle keeps a closed model's
    Llama alive). LlamaGrammar keeps its text in _grammar and its root rule in _root.
    Tested: 0.3.36."""
    if not on:
        llm.__dict__.pop("_init_sampler", None)  # the class's own method again
        return
    import weakref

    import llama_cpp
    from llama_cpp import Llama

    from daemon.engine.checked_sampler import CheckedSampler

    owner = weakref.ref(llm)

    def init_sampler(**kwargs: Any) -> Any:
        me: Any = owner()  # alive: only its own generate() calls this
        grammar = kwargs.pop("grammar", None)
        chain = Llama._init_sampler(me, **kwargs)
        if grammar is None:
            return chain
        native = llama_cpp.llama_sampler_init_grammar(
            vocab(me), grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not native:  # grammar_compiles() checked it; never a NULL sampler in use
            chain.close()
            raise ValueError("llama.cpp's parser refused the grammar")
        return CheckedSampler(chain, native, me.n_vocab())

    llm._init_sampler = init_sampler


def token_text(llm: Any, token: int) -> str:
    """A special token's text (BOS/EOS for the chat template). Tested: 0.3.36."""
    return "" if token == -1 else str(llm._model.token_get_text(token))


def adds_bos(llm: Any) -> bool:
    """Whether the model's tokenizer wants a BOS token in front. Tested: 0.3.36."""
    return bool(llm._model.add_bos_token())


def n_ctx_train(llm: Any) -> int:
    """The context length the model was trained with. Tested: 0.3.36."""
    return int(llm._model.n_ctx_train())


def vocab(llm: Any) -> Any:
    """The model's vocab handle, for llama_vocab_is_eog. Tested: 0.3.36."""
    return llm._model.vocab


def grammar_compiles(llm: Any, gbnf: str) -> bool:
    """Whether llama.cpp's parser takes a GBNF grammar. LlamaGrammar.from_string does not parse
    (0.3.36 keeps the text); a grammar that fails at sampling leaves a NULL sampler in the chain
    and generate() segfaults. So the sampler is made once here, and freed. Tested: 0.3.36."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab(llm), gbnf.encode("utf-8"), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


def native_limits(llm: Any) -> tuple[int, int]:
    """(threads, n_ctx) as llama.cpp itself reports them. Tested: 0.3.36."""
    import llama_cpp

    ctx = llm._ctx.ctx
    return llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_ctx(ctx)


def set_threads(llm: Any, n: int, n_batch: int | None = None) -> None:
    """Change the context's decode and prompt-processing thread counts in place
    (llama_set_n_threads: no reload); n_batch None: prefill on n too. Tested: 0.3.36.
    """
    n_batch = n if n_batch is None else n_batch
    llm._ctx.set_n_threads(n, n_batch)
    llm.context_params.n_threads_batch = n_batch
    llm.context_params.n_threads = n
    llm.n_threads = n
    llm.n_threads_batch = n_batch


def rebuild_context(llm: Any, n_ctx: int) -> None:
    """Swap the context (and its KV cache) for one of n_ctx tokens; the model stays mapped.

    llama-cpp-python has no public call for this; it mirrors what Llama.__init__ does. The old
    context is freed first: on a Pi the point of a smaller context is the memory. Tested: 0.3.36.
    """
    import numpy as np
    from llama_cpp import _internals

    llm._ctx.close()
    llm._batch.close()
    llm.context_params.n_ctx = n_ctx
    llm._ctx = llm._stack.enter_context(
        contextlib.closing(
            _internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False)
        )
    )
    llm._batch = llm._stack.enter_context(
        contextlib.closing(
            _internals.LlamaBatch(n_tokens=llm.n_batch, embd=0, n_seq_max=n_ctx, verbose=False)
        )
    )
    llm._n_ctx = n_ctx
    llm.input_ids = np.ndarray((n_ctx,), dtype=np.intc)
    llm.n_tokens = 0
    llm._requires_eval = True


def context_alive(llm: Any) -> bool:
    """Whether the Llama still has a live context (a fault mid-rebuild can leave it closed).

    Tested: 0.3.36 (LlamaContext.close() drops its ctx pointer to None).
    """
    ctx = getattr(llm, "_ctx", None)
    return ctx is not None and getattr(ctx, "ctx", None) is not None


def cached_tokens(llm: Any) -> Any:
    """The tokens now in the KV cache (what generate() may reuse). Tested: 0.3.36."""
    return llm.input_ids[: llm.n_tokens]


def thread_counts(llm: Any) -> tuple[int, int]:
    """(threads, batch threads) the context was made with. Tested: 0.3.36."""
    return int(llm.context_params.n_threads), int(llm.context_params.n_threads_batch)


def save_sequence(llm: Any) -> tuple[Any, list[int]]:
    """The KV cache of the live sequence (seq 0) as a buffer, and the tokens it holds.

    Only the KV cells (about 23 KB a token for SmolLM2-135M), not the logits llama-cpp-python's
    save_state() also copies. Tested: 0.3.36.
    """
    import ctypes

    import llama_cpp

    ctx = llm._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    buf = (ctypes.c_uint8 * size)()
    n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
    if n == 0 or n > size:
        raise RuntimeError("llama_state_seq_get_data failed")
    return buf, [int(t) for t in llm.input_ids[: llm.n_tokens]]


def restore_sequence(llm: Any, buf: Any, tokens: list[int]) -> bool:
    """Put a saved sequence back as the live one; False (and an empty cache) if llama.cpp
    refuses it. generate() then evaluates at least the last prompt token again, so logits are
    fresh (`_requires_eval`). Tested: 0.3.36."""
    import llama_cpp

    if len(tokens) >= llm.n_ctx():
        llm.reset()
        return False
    if llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, buf, len(buf), 0) == 0:
        llm.reset()
        return False
    llm.input_ids[: len(tokens)] = tokens
    llm.n_tokens = len(tokens)
    llm._requires_eval = True
    return True


def copy_without_layers(src: str, dst: str, drop: list[int]) -> None:
    """Write dst: src's tensors as they are, less the blocks numbered in drop (ascending), the
    rest renumbered and the block count set (llama.cpp's quantizer, only_copy and prune_layers;
    tested: 0.3.36). The copy loads and runs like the model with fewer layers; its words mean
    nothing. Raises RuntimeError when llama.cpp refuses."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.only_copy = True
    params.nthread = 1
    layers = (ctypes.c_int32 * (len(drop) + 1))(*sorted(drop), -1)  # -1 ends the list
    params.prune_layers = ctypes.cast(layers, ctypes.POINTER(ctypes.c_int32))
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not copy {src} without layers {drop} (code {rc})")
