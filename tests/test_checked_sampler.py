"""A grammar checked after sampling (engine/checked_sampler.py), with the real model: the reply
obeys the grammar as before, greedy text is the same token for token, and a token the grammar
refuses is sampled again under it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from llama_cpp import LlamaGrammar

from daemon.engine import llama_compat, structured
from daemon.engine.checked_sampler import CheckedSampler

SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"enum": ["on", "off"]},
        "device": {"type": "string", "maxLength": 24},
    },
    "required": ["action", "device"],
}
PROMPT = "<|im_start|>user\nTurn on the kitchen light, as JSON.<|im_end|>\n<|im_start|>assistant\n"
TOOL = {
    "type": "function",
    "function": {
        "name": "HassTurnOn",
        "description": "Turns on a device",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def llm(model_path: Path) -> Iterator[Any]:
    llm = llama_compat.load_llama(
        str(model_path), repack=False, n_ctx=512, n_threads=2, verbose=False
    )
    yield llm
    llm.close()


def _generate(
    llm: Any, grammar: Any, checked: bool, limit: int = 48, **kw: Any
) -> tuple[list[int], tuple[int, int]]:
    """Tokens up to the end of the reply, on llama-cpp-python's own grammar path or the check,
    and the check's counts: tokens taken as sampled, tokens sampled again."""
    llama_compat.check_grammar_after_sampling(llm, on=checked)
    prompt = llm.tokenize(PROMPT.encode(), special=True)
    # Evaluated afresh every time: a cached prefix re-evaluates its last token alone, and the
    # single-token kernels round differently from the batch ones on some CPUs.
    llm.reset()
    out: list[int] = []
    try:
        for token in llm.generate(prompt, grammar=grammar, **{"repeat_penalty": 1.1, **kw}):
            if llama_cpp.llama_vocab_is_eog(llama_compat.vocab(llm), token) or len(out) >= limit:
                break
            out.append(token)
        sampler = llm._sampler
        counts = (sampler.checked, sampler.refused) if checked else (0, 0)
        return out, counts
    finally:
        llama_compat.release_sampler(llm)


def _schema() -> Any:
    """SCHEMA as the engine compiles it (no raw control characters inside strings)."""
    return LlamaGrammar.from_string(structured._schema_gbnf(json.dumps(SCHEMA)), verbose=False)


def test_greedy_text_is_the_same_token_for_token(llm: Any):
    grammars = [
        _schema(),
        LlamaGrammar.from_string(structured._call_gbnf((TOOL,), "edgellm", "auto"), verbose=False),
    ]
    for grammar in grammars:
        own, _ = _generate(llm, grammar, checked=False, temp=0.0)
        mine, counts = _generate(llm, grammar, checked=True, temp=0.0)
        assert mine == own and mine
        assert sum(counts) == len(mine) + 1  # and the end (EOS, or the one past the limit)


def test_sampled_replies_obey_the_schema_and_refused_tokens_are_sampled_again(llm: Any):
    refused = 0
    for seed in range(6):
        llm.set_seed(seed)
        tokens, counts = _generate(
            llm, _schema(), checked=True, limit=96, temp=1.0, top_k=40, top_p=0.95
        )
        reply = json.loads(llm.detokenize(tokens).decode())
        assert reply["action"] in ("on", "off") and isinstance(reply["device"], str)
        refused += counts[1]
    assert refused > 0  # the model's free choice broke the JSON, and the grammar mended it


def test_a_grammar_the_model_would_never_follow_is_followed(llm: Any):
    grammar = LlamaGrammar.from_string('root ::= "[" [0-9]{3} "]"', verbose=False)
    tokens, (_, refused) = _generate(llm, grammar, checked=True, temp=0.0)
    text = llm.detokenize(tokens).decode()
    assert len(text) == 5 and text[0] == "[" and text[1:4].isdigit() and text[4] == "]"
    assert refused >= 1


def test_without_a_grammar_the_chain_is_llama_cpp_pythons_own(llm: Any):
    llama_compat.check_grammar_after_sampling(llm)
    stream = llm.generate(llm.tokenize(b"Hello", add_bos=True), temp=0.0)
    next(stream)
    stream.close()
    assert not isinstance(llm._sampler, CheckedSampler)
    llama_compat.release_sampler(llm)


def test_releasing_frees_the_grammar_and_the_chain(llm: Any):
    llama_compat.check_grammar_after_sampling(llm)
    stream = llm.generate(llm.tokenize(PROMPT.encode(), special=True), grammar=_schema())
    next(stream)
    stream.close()
    sampler = llm._sampler
    assert isinstance(sampler, CheckedSampler)
    llama_compat.release_sampler(llm)
    assert sampler._grammar is None and sampler._chain.sampler is None
    sampler.close()  # twice: no error


def test_the_engine_loads_every_model_with_the_check(model_path: Path):
    from daemon.config import ModelConfig
    from daemon.engine import loading

    llm, _, _ = loading.load(model_path, "smollm2-135m", ModelConfig(n_ctx=512, n_threads=1), False)
    try:
        stream = llm.generate(llm.tokenize(PROMPT.encode(), special=True), grammar=_schema())
        next(stream)
        stream.close()
        assert isinstance(llm._sampler, CheckedSampler)
        llama_compat.release_sampler(llm)
    finally:
        llm.close()


def test_the_check_keeps_no_model_alive(model_path: Path):
    import weakref

    llm = llama_compat.load_llama(str(model_path), repack=False, n_ctx=128, verbose=False)
    llama_compat.check_grammar_after_sampling(llm)
    ref = weakref.ref(llm)
    llm.close()
    del llm
    assert ref() is None  # freed by reference counting, no garbage collection needed
