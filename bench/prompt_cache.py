"""Cold vs warm TTFT for a repeated ~200-token system prompt (target: warm <= 30 % of cold).

    python -m bench.prompt_cache [--rounds 5]

Each round: a request with another system prompt (evicting the KV cache), then a request with
the long system prompt (cold: all of it evaluated), then two more with the same system prompt
and new questions (warm: only the question evaluated). TTFT is the daemon's own (arrival to
first token) and the client's (publish to first delta); medians and spread are printed.
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from typing import Any

from bench.common import Tally, report, serving

SYSTEM = (
    "You are the voice assistant of a small family home. You control lights, heating, blinds "
    "and the door lock through Home Assistant, and you answer questions about the weather, the "
    "calendar and the shopping list. Answer in one or two short sentences that sound natural "
    "when spoken aloud. Never read out lists longer than three items; offer to send them to a "
    "phone instead. Use the metric system and the 24-hour clock. If a request is ambiguous, ask "
    "one short question back. Do not invent devices that are not listed. Rooms: kitchen, living "
    "room, hallway, bathroom, the children's room, the main bedroom, the study and the garden. "
    "Lights can be dimmed from 1 to 100 percent. The heating has a target temperature per room "
    "between 15 and 24 degrees. The blinds open or close fully or to a percentage. The door lock "
    "needs a spoken confirmation before it opens. Be friendly and brief."
)
QUESTIONS = [
    "Turn on the kitchen lights.",
    "Is it going to rain tomorrow?",
    "Set the study to 21 degrees.",
    "What is on the shopping list?",
    "Close the living room blinds halfway.",
    "Dim the hallway to 30 percent.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    settings = {"governor": {"thread_sweep": False}, "policy": {"reply_topics": ["bench/#"]}}
    with serving(settings) as (broker, d):
        tally = Tally(broker, f"bench/cache/{uuid.uuid4().hex[:6]}")
        rows: dict[str, list[tuple[float, float, int]]] = {"cold": [], "warm": []}

        def ask(system: str, question: str) -> tuple[float, float, int]:
            rid = uuid.uuid4().hex[:12]
            body = {"system": system, "prompt": question, "max_tokens": 8, "stream": True}
            tally.send(f"{d.prefix}/request", rid, body)
            if not tally.wait_all([rid], 60):
                raise RuntimeError("no answer")
            done = tally.terminal[rid][0]
            client_ms = (tally.first_at[rid] - tally.sent_at[rid]) * 1000
            return done["timings"]["ttft_ms"], client_ms, done["usage"]["prompt_tokens"]

        try:
            ask("You are terse.", "Hi")  # warm-up: weights paged in
            for r in range(args.rounds):
                ask("You are a pirate.", "Say hello.")  # another system prompt: the cache moves on
                rows["cold"].append(ask(SYSTEM, QUESTIONS[r % len(QUESTIONS)]))
                for k in (1, 2):
                    rows["warm"].append(ask(SYSTEM, QUESTIONS[(r + k) % len(QUESTIONS)]))
        finally:
            tally.close()
    result: dict[str, Any] = {}
    for kind, got in rows.items():
        result[kind] = {
            "ttft_ms_median": round(statistics.median(g[0] for g in got), 1),
            "ttft_ms_all": [round(g[0], 1) for g in got],
            "client_first_delta_ms_median": round(statistics.median(g[1] for g in got), 1),
            "prompt_tokens": got[0][2],
        }
    result["warm/cold"] = round(
        result["warm"]["ttft_ms_median"] / result["cold"]["ttft_ms_median"], 3
    )
    report("prompt_cache", result)


if __name__ == "__main__":
    main()
