"""JSON-schema constrained replies from the bundled model: do they parse and match? (issue 11)

    python -m bench.structured [--requests 50]

Each request asks a home-automation command with a schema {"action": "on"|"off", "device":
string}; half greedy, half at the node's default temperature. Counts replies whose `parsed`
object matches the schema (target: 50 of 50), and the median time per reply.
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from typing import Any

from bench.common import Tally, report, serving
from tests.shapes import SCHEMA, matches

ASKS = [
    "Turn on the kitchen light.",
    "Switch off the fan in the bedroom.",
    "Please turn the hallway lamp off.",
    "I'm cold, switch on the heater in the study.",
    "Lights on in the garden.",
    "Turn off the TV.",
    "Could you power on the coffee machine?",
    "Shut off the bathroom light.",
    "Switch the porch light on.",
    "Kill the music in the living room.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    settings = {"governor": {"thread_sweep": False}, "policy": {"reply_topics": ["bench/#"]}}
    with serving(settings) as (broker, d):
        tally = Tally(broker, f"bench/structured/{uuid.uuid4().hex[:6]}")
        good, seconds, bad = 0, [], []
        try:
            for i in range(args.requests):
                rid = uuid.uuid4().hex[:12]
                body: dict[str, Any] = {"prompt": ASKS[i % len(ASKS)], "json_schema": SCHEMA}
                body["max_tokens"] = 64
                if i % 2 == 0:
                    body["temperature"] = 0
                tally.send(f"{d.prefix}/request", rid, body)
                tally.wait_all([rid], 120)
                reply = tally.terminal[rid][0]
                seconds.append(tally.terminal_at[rid] - tally.sent_at[rid])
                if reply.get("type") == "done" and matches(reply.get("parsed")):
                    good += 1
                else:
                    bad.append(reply.get("text") or reply.get("message"))
        finally:
            tally.close()
    report(
        "structured",
        {
            "requests": args.requests,
            "valid": good,
            "median_s": round(statistics.median(seconds), 3),
            "invalid_texts": bad[:5],
        },
    )


if __name__ == "__main__":
    main()
