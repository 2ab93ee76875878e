"""Follow-up TTFT in a 5-turn session vs the same new turn with no history (target <= 1.5x).

    python -m bench.sessions [--rounds 8]

Each round, on one daemon with the household system prompt of bench/prompt_cache.py:
- no history: the fifth question alone, no session, after a request with the same system
  prompt (so the system prompt is cached, as it is in a conversation);
- live: four turns of session A, then its fifth: the history is in the KV cache;
- restored: four turns of session B, one turn of another session, then B's fifth: B's KV
  state was saved when the other took the cache, and is put back;
- re-evaluated: four turns of session C, then its fifth with a seed (a seeded request
  evaluates its prompt afresh): what a follow-up would cost without any reuse.
Every measured request waits --pause-s first (0.5 s: a person takes longer to say a follow-up).
TTFT is the daemon's own (arrival to first token) and the client's (publish to the first
delta); medians, every sample and the ratios to "no history" are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

from bench.common import Tally, report, serving, summary
from bench.prompt_cache import SYSTEM

TURNS = [
    "Turn on the kitchen lights.",
    "Is it going to rain tomorrow?",
    "Set the study to 21 degrees.",
    "Close the living room blinds halfway.",
]
FOLLOW_UP = "And dim the hallway to 30 percent, please."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--reply-tokens", type=int, default=32, help="max_tokens of each turn")
    ap.add_argument(
        "--pause-s",
        type=float,
        default=0.5,
        help="wait before each measured request, as a person does before a follow-up (the node "
        "finishes the last turn's bookkeeping meanwhile); 0: back to back",
    )
    args = ap.parse_args()
    settings = {"governor": {"thread_sweep": False}, "policy": {"reply_topics": ["bench/#"]}}
    with serving(settings) as (broker, d):
        tally = Tally(broker, f"bench/sessions/{uuid.uuid4().hex[:6]}")

        def ask(prompt: str, session: str | None = None, **extra: Any) -> dict[str, Any]:
            if prompt == FOLLOW_UP:
                time.sleep(args.pause_s)
            rid = uuid.uuid4().hex[:12]
            body = {"system": SYSTEM, "prompt": prompt, "max_tokens": args.reply_tokens}
            body.update(stream=True, stream_interval_ms=0, temperature=0, **extra)
            if session is not None:
                body["session"] = session
            tally.send(f"{d.prefix}/request", rid, body)
            if not tally.wait_all([rid], 120):
                raise RuntimeError("no answer")
            done = tally.terminal[rid][0]
            if done.get("type") != "done":
                raise RuntimeError(f"request failed: {done}")
            done["client_ms"] = (tally.first_at[rid] - tally.sent_at[rid]) * 1000
            return done

        def conversation(sid: str) -> None:
            for turn in TURNS:
                ask(turn, sid)

        rows: dict[str, list[dict[str, Any]]] = {
            "no_history": [],
            "live": [],
            "restored": [],
            "re_evaluated": [],
        }
        try:
            ask("Hi.")  # warm-up: weights paged in
            for r in range(args.rounds):
                tag = f"r{r}-{uuid.uuid4().hex[:6]}"
                ask(TURNS[0])
                rows["no_history"].append(ask(FOLLOW_UP))
                conversation(f"{tag}-a")
                rows["live"].append(ask(FOLLOW_UP, f"{tag}-a"))
                conversation(f"{tag}-b")
                ask("What time is it?", f"{tag}-other")
                rows["restored"].append(ask(FOLLOW_UP, f"{tag}-b"))
                conversation(f"{tag}-c")
                rows["re_evaluated"].append(ask(FOLLOW_UP, f"{tag}-c", seed=r + 1))
        finally:
            tally.close()
    result: dict[str, Any] = {}
    for kind, got in rows.items():
        result[kind] = {
            "ttft_ms": summary([g["timings"]["ttft_ms"] for g in got]),
            "ttft_ms_all": [round(g["timings"]["ttft_ms"], 1) for g in got],
            "queue_ms_median": round(statistics.median(g["timings"]["queue_ms"] for g in got), 1),
            "client_first_delta_ms": summary([g["client_ms"] for g in got]),
            "prompt_tokens_median": statistics.median(g["usage"]["prompt_tokens"] for g in got),
            "cached_tokens_median": statistics.median(
                g.get("session", {}).get("cached_tokens", 0) for g in got
            ),
            "session_messages": sorted({g.get("session", {}).get("messages", 0) for g in got}),
        }
    base = result["no_history"]["ttft_ms"]["median"]
    result["ratio_to_no_history"] = {
        kind: round(result[kind]["ttft_ms"]["median"] / base, 3)
        for kind in ("live", "restored", "re_evaluated")
    }
    # Per round, so the spread of the ratio itself shows (the VM is noisy).
    result["live_ratio_per_round"] = [
        round(a["timings"]["ttft_ms"] / b["timings"]["ttft_ms"], 2)
        for a, b in zip(rows["live"], rows["no_history"], strict=True)
    ]
    result["restored_ratio_per_round"] = [
        round(a["timings"]["ttft_ms"] / b["timings"]["ttft_ms"], 2)
        for a, b in zip(rows["restored"], rows["no_history"], strict=True)
    ]
    report("sessions", result)


if __name__ == "__main__":
    main()
