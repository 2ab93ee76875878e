"""A restart with sessions.persist keeps every session's turns (target: all of them).

    python -m bench.session_restart [--sessions 20] [--turns 3]

Opens --sessions conversations of --turns turns each on a daemon with a SQLite session file,
restarts the daemon (SIGTERM, start again on the same file), and asks each session one more
question: its `done` must say it holds 2 x (turns + 1) messages. Prints how many did, the
restart's duration and the file's size.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from bench.common import Broker, Daemon, Tally, free_port, report, workdir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--turns", type=int, default=3)
    args = ap.parse_args()
    where = workdir()
    db = where / "sessions.db"
    broker = Broker(free_port(), where).start()
    settings = {
        "governor": {"thread_sweep": False},
        "policy": {"reply_topics": ["bench/#"]},
        "sessions": {"persist": str(db), "max_sessions": max(64, args.sessions)},
    }
    d = Daemon(broker, where, settings=settings).start()
    tally = Tally(broker, f"bench/restart/{uuid.uuid4().hex[:6]}")

    def ask(session: str, prompt: str) -> dict[str, Any]:
        rid = uuid.uuid4().hex[:12]
        body = {"prompt": prompt, "session": session, "max_tokens": 12, "temperature": 0}
        tally.send(f"{d.prefix}/request", rid, body)
        if not tally.wait_all([rid], 120):
            raise RuntimeError("no answer")
        return tally.terminal[rid][0]

    sessions = [f"s{i}-{uuid.uuid4().hex[:6]}" for i in range(args.sessions)]
    try:
        for turn in range(args.turns):
            for sid in sessions:
                ask(sid, f"Question {turn + 1}: name something blue.")
        t0 = time.monotonic()
        d.stop()
        d.start()
        restart_s = time.monotonic() - t0
        kept = []
        for sid in sessions:
            done = ask(sid, "And now something green?")
            kept.append(done.get("session", {}).get("messages") == 2 * (args.turns + 1))
    finally:
        tally.close()
        d.stop()
        broker.stop()
    report(
        "session_restart",
        {
            "sessions": args.sessions,
            "turns_each": args.turns,
            "kept_after_restart": sum(kept),
            "restart_s": round(restart_s, 2),
            "db_bytes": db.stat().st_size,
        },
    )


if __name__ == "__main__":
    main()
