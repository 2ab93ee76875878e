"""Decoding speed under a grammar: none, llama-cpp-python's own (the grammar over the whole
vocabulary at every token) and edgellm's (sample, then check: engine/checked_sampler.py).

    python -m bench.grammar_speed [--rounds 3] [--tokens 64] [--threads 2]

Two grammars, each on the prompt it serves: Home Assistant's first call with its 26 tools in
edgellm's compact format ("text or a call"; the model answers in text) and a JSON schema reply
(every token constrained). Greedy, the same tokens every way (the test suite holds that); each
reply is timed to its end (at most --tokens); the modes are interleaved within each round.
Prints tok/s per mode and round, then medians as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from bench import ha_fixture
from bench.common import machine
from daemon import models
from daemon.engine import llama_compat, structured, toolprompt

SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"enum": ["turn_on", "turn_off", "toggle"]},
        "device": {"type": "string"},
        "area": {"type": "string"},
        "note": {"type": "string"},
    },
    "required": ["action", "device", "area", "note"],
}
MODES = ("none", "llama-cpp-python", "checked")


def _chatml(system: str, user: str) -> str:
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def workloads() -> dict[str, tuple[str, str]]:
    """name: (prompt text, GBNF as the engine compiles it)."""
    tools = tuple(ha_fixture.tools())
    system = f"{ha_fixture.system_prompt()}\n\n{toolprompt.section(tools, 'compact')}"
    ha = _chatml(system, "Tell me a long story about the kitchen light.")
    note = _chatml("Answer in JSON.", "Describe the kitchen light in the note, at length.")
    return {
        "ha_tools": (ha, structured._call_gbnf(tools, "edgellm", "auto")),
        "json_schema": (note, structured._schema_gbnf(json.dumps(SCHEMA))),
    }


def decode_rate(llm: Any, prompt: list[int], grammar: Any, mode: str, n: int) -> float:
    """tok/s of up to n tokens after the first, to the reply's end (the prompt is cached after
    the first round)."""
    import llama_cpp

    llama_compat.check_grammar_after_sampling(llm, on=mode == "checked")
    vocab = llama_compat.vocab(llm)
    count, start = 0, None
    try:
        stream = llm.generate(
            prompt, temp=0.0, repeat_penalty=1.1, grammar=None if mode == "none" else grammar
        )
        for token in stream:
            if start is None:
                start = time.perf_counter()
                continue
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            count += 1
            if count >= n:
                break
        return count / (time.perf_counter() - (start or 0.0))
    finally:
        llama_compat.release_sampler(llm)


def main() -> None:
    from llama_cpp import LlamaGrammar

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    args = ap.parse_args()
    path = models.locate(args.model, None)
    llm = llama_compat.load_llama(
        str(path), repack=True, n_ctx=8192, n_threads=args.threads, verbose=False
    )
    out: dict[str, Any] = {"machine": machine(), "model": args.model, "threads": args.threads}
    for name, (text, gbnf) in workloads().items():
        prompt = llm.tokenize(text.encode(), special=True)
        grammar = LlamaGrammar.from_string(gbnf, verbose=False)
        rates: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            for mode in MODES:
                rates[mode].append(decode_rate(llm, prompt, grammar, mode, args.tokens))
            print(name, len(prompt), r, {m: round(v[-1], 1) for m, v in rates.items()}, flush=True)
        out[name] = {
            "prompt_tokens": len(prompt),
            **{
                m: {"median": round(statistics.median(v), 1), "all": [round(x, 1) for x in v]}
                for m, v in rates.items()
            },
        }
    llm.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
