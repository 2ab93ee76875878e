"""llama-cpp-python's internals: an upgrade that moves one fails loudly, in one place."""

from __future__ import annotations

import gc
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from daemon.engine import llama_compat
from daemon.engine.llama_compat import IncompatibleLlama, check_internals

REPO = Path(__file__).resolve().parent.parent


def _fake_llama(drop: str | None = None) -> SimpleNamespace:
    """A stand-in with every internal llama_compat touches, less the one named by drop."""
    ctx = SimpleNamespace(**{a: object() for a in llama_compat._CTX_ATTRS})
    model = SimpleNamespace(**{a: object() for a in llama_compat._MODEL_ATTRS})
    llm = SimpleNamespace(**{a: object() for a in llama_compat._LLAMA_ATTRS})
    llm._ctx, llm._model = ctx, model
    if drop is not None:
        owner, attr = drop.split(".")
        target = {"Llama": llm, "LlamaContext": ctx, "LlamaModel": model}[owner]
        delattr(target, attr)
    return llm


def test_a_complete_llama_passes():
    check_internals(_fake_llama())


INTERNALS = [
    *(f"Llama.{a}" for a in llama_compat._LLAMA_ATTRS if a not in ("_ctx", "_model")),
    *(f"LlamaContext.{a}" for a in llama_compat._CTX_ATTRS),
    *(f"LlamaModel.{a}" for a in llama_compat._MODEL_ATTRS),
]


@pytest.mark.parametrize("missing", INTERNALS)
def test_a_missing_internal_is_named_with_the_tested_versions(missing: str):
    with pytest.raises(IncompatibleLlama) as err:
        check_internals(_fake_llama(missing))
    assert missing in str(err.value)
    assert all(v in str(err.value) for v in llama_compat.TESTED_VERSIONS)


def test_a_missing_context_is_named_with_its_own_internals():
    llm = _fake_llama()
    del llm._ctx
    with pytest.raises(IncompatibleLlama, match=r"Llama\._ctx.*LlamaContext\.ctx"):
        check_internals(llm)


def test_the_installed_version_is_a_tested_one_and_the_pin_names_it():
    assert llama_compat.version() in llama_compat.TESTED_VERSIONS
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    pin = re.search(r'"llama-cpp-python==([0-9.]+)"', pyproject)
    assert pin is not None and pin.group(1) in llama_compat.TESTED_VERSIONS


def test_the_sampler_of_a_generation_is_freed_at_once(model_path: Path):
    """Left to llama-cpp-python, each generation's native sampler chain lives until a full
    garbage collection (a reference cycle): a long-lived daemon's memory creeps."""
    llm = llama_compat.load_llama(
        str(model_path), repack=False, n_ctx=128, n_threads=1, verbose=False
    )
    try:
        tokens = llm.tokenize(b"Hello", add_bos=True)
        stream = llm.generate(tokens, temp=0.0, repeat_penalty=1.1)
        next(stream)
        stream.close()
        sampler = llm._sampler
        assert sampler is not None and sampler.sampler is not None
        collections = gc.get_stats()[2]["collections"]
        llama_compat.release_sampler(llm)
        assert llm._sampler is None
        assert sampler.sampler is None  # the native chain is freed, no collection needed
        assert gc.get_stats()[2]["collections"] == collections
        llama_compat.release_sampler(llm)  # nothing to free: no error
    finally:
        llm.close()
