"""A grammar applied the way llama.cpp's own samplers apply it: sample first, then check.

llama-cpp-python 0.3.36 puts a request's grammar at the head of its sampler chain, so every
token of every constrained reply runs the grammar over the whole vocabulary (49,152 candidates
for SmolLM2, 262,144 for Gemma 3), a cost per token larger than the model's own at this size.
llama.cpp's common sampler (llama-server, llama-cli) does it the other way round: sample from
the chain without the grammar, check that one token against the grammar, and only when the
grammar refuses it apply the grammar to every candidate and sample again. The reply is held to
the grammar exactly as before; a token the grammar allows costs one check instead of 49,152.

CheckedSampler stands where llama-cpp-python keeps its sampler (Llama._sampler, made by
Llama._init_sampler: llama_compat.check_grammar_after_sampling) and answers its one call,
sample(ctx, idx). The worker thread is its only user.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

# llama_token_data {int32 id; float logit; float p}, as numpy sees it.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class CheckedSampler:
    """A llama-cpp-python sampler chain (made without the grammar) and the grammar beside it."""

    def __init__(self, chain: Any, grammar: Any, n_vocab: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._chain = chain  # llama_cpp._internals.LlamaSampler: penalties ... dist / greedy
        self._grammar = grammar  # a native llama_sampler (llama_sampler_init_grammar)
        self._cur = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self.checked = 0  # tokens the grammar took as sampled
        self.refused = 0  # tokens it refused: sampled again under the grammar

    def sample(self, ctx: Any, idx: int) -> int:
        lib = self._lib
        logits = lib.llama_get_logits_ith(ctx.ctx, idx)
        token = self._pick(logits, with_grammar=False)
        if self._allows(token):
            self.checked += 1
        else:
            self.refused += 1
            token = self._pick(logits, with_grammar=True)
        lib.llama_sampler_accept(self._grammar, token)
        lib.llama_sampler_accept(self._chain.sampler, token)
        return token

    def _pick(self, logits: Any, with_grammar: bool) -> int:
        lib, cur = self._lib, self._cur
        # Every field afresh: the chain sorts the candidates in place.
        cur["id"] = self._ids
        cur["logit"] = np.ctypeslib.as_array(logits, shape=(len(cur),))
        cur["p"] = 0.0
        array = lib.llama_token_data_array(
            cur.ctypes.data_as(lib.llama_token_data_p), len(cur), -1, False
        )
        if with_grammar:
            lib.llama_sampler_apply(self._grammar, ctypes.byref(array))
        lib.llama_sampler_apply(self._chain.sampler, ctypes.byref(array))
        # The chain ends in dist or greedy, which sets selected; data may now point elsewhere
        # in the same buffer (sorted in place), so read through the array.
        return int(array.data[array.selected].id)

    def _allows(self, token: int) -> bool:
        lib = self._lib
        one = lib.llama_token_data(token, 1.0, 0.0)
        array = lib.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        lib.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return not math.isinf(one.logit)

    def close(self) -> None:
        grammar, self._grammar = self._grammar, None
        if grammar:
            self._lib.llama_sampler_free(grammar)
        self._chain.close()
