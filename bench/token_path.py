"""What edgellm's own per-token work costs, next to a decode step (the "lean path" profile).

    python -m bench.token_path

Times, in microseconds per token, each piece of work generation.py and the MQTT front door do
for one token (detokenize, the end-of-generation check, UTF-8 decode + stop + policy filters,
encoding a delta payload), and one decode step of the model at the configured threads, so the
share of the token's time spent in Python is plain.
"""

from __future__ import annotations

import codecs
import time
import timeit

from bench.common import report
from daemon import cpus, models
from daemon.engine import llama_compat
from daemon.engine.textstream import StopMatcher
from daemon.frontends.mqtt_messages import delta_payload
from daemon.safeguards.policy import TermFilter


def per_call_us(fn: object, n: int = 20000) -> float:
    return round(timeit.timeit(fn, number=n) / n * 1e6, 2)  # type: ignore[arg-type]


def main() -> None:
    import llama_cpp

    llm = llama_compat.load_llama(
        str(models.locate(models.DEFAULT_MODEL, None)),
        repack=False,
        n_ctx=512,
        n_threads=cpus.default_threads(),
        n_threads_batch=cpus.default_threads(),
        verbose=False,
    )
    vocab = llama_compat.vocab(llm)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops, terms = StopMatcher(("</s>",)), TermFilter(["xyzzy"])
    costs = {
        "detokenize": per_call_us(lambda: llm.detokenize([1234])),
        "is_eog": per_call_us(lambda: llama_cpp.llama_vocab_is_eog(vocab, 1234)),
        "utf8_stop_policy": per_call_us(lambda: terms.feed(stops.feed(decoder.decode(b" the")))),
        "delta_payload": per_call_us(lambda: delta_payload("abc123", 17, " the")),
    }
    llm.eval(llm.tokenize(b"Once upon a time"))
    steps = []
    for _ in range(64):
        t0 = time.perf_counter()
        llm.eval([1234])
        steps.append(time.perf_counter() - t0)
    decode_us = round(sorted(steps)[len(steps) // 2] * 1e6, 1)
    python_us = sum(costs.values())
    report(
        "token_path",
        {
            "per_token_us": costs,
            "python_total_us": round(python_us, 1),
            "decode_step_us_median": decode_us,
            "python_share": round(python_us / decode_us, 4),
        },
    )


if __name__ == "__main__":
    main()
