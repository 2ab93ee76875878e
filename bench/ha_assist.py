"""Replay what Home Assistant 2026.11 sends a voice assistant's LLM server (bench/ha_fixture.py)
with HA's own clients, and read each reply as HA does.

    python -m bench.ha_assist --url http://127.0.0.1:11434 [--integration both] [--streaming]
    python -m bench.ha_assist --start-edgellm --gap-s 0 --conversations 1   # a quick smoke run
    python -m bench.ha_assist --start-llama-server --streaming --between --json out.json

HA pins ollama==0.6.2 and openai==3.26.0 (install them, e.g. `pip install --target DIR` with DIR
on PYTHONPATH; else a warning). Sync clients: HA's async twins send the same bodies.

Per request: HTTP status, TTFT (the first chunk carrying content or a piece of a tool call; the
whole request when not streamed), "ready" (when HA's reader has something to act on: the first
words, or a tool call once complete; a server that streams a call piece by piece has its TTFT
before the call is usable), total time, the prompt tokens the server reports (ollama:
prompt_eval_count; OpenAI: usage, else llama-server's timings), and the tool call as HA takes
it: ollama/entity.py _transform_stream + _parse_tool_args; llama_cpp/entity.py _transform_stream
(only delta.tool_calls[0], tracked by index, arguments json.loads-ed; "role" says whether a delta
carried role "assistant", without which HA's streaming TTS stays silent) or _transform_response.
"exists": the tool is among the fixture's; "right": it is the one expected. Conversations start
--gap-s apart; --between sends an unrelated plain OpenAI request (no tools, another system prompt)
before each of HA's requests, to show what losing the cached prefix costs.
--start-edgellm runs a daemon and a broker (bench/common.py), --start-llama-server llama.cpp's own
server (bench/llamacpp_build.py) with --jinja on the same model and threads; loopback only.
--peer-template gives llama-server a template that renders tools (bench/templates/chatml-tools
.jinja, SmolLM2's own with HA's tools as JSON in the Hermes shape), so that both servers do the
same work: without it llama-server drops the tools of a model whose template takes none.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import ollama
import openai

from bench import ha_fixture, llamacpp_build, peers
from bench.common import free_port, machine, serving
from daemon import cpus, models

# SmolLM2's template with tools in the Hermes shape: llama-server then renders HA's tools and
# parses the calls (its own template for this model takes none and drops them).
PEER_TEMPLATE = Path(__file__).parent / "templates" / "chatml-tools.jinja"
HA_PINS = {"ollama": "0.6.2", "openai": "3.26.0"}  # ollama/ and llama_cpp/manifest.json
BETWEEN = [
    {"role": "system", "content": "You write short captions for a photo album."},
    {"role": "user", "content": "A caption for a picture of a lighthouse at dusk."},
]


@dataclass
class Row:
    integration: str
    conversation: int
    turn: int
    call: int
    status: int | None = None
    error: str | None = None
    ttft_s: float | None = None
    ready_s: float | None = None  # HA has something to act on: words to speak or a whole call
    total_s: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    tool: str | None = None
    parses: bool | None = None
    role: bool | None = None
    exists: bool | None = None
    right: bool | None = None
    expected: str | None = None
    reply: str | None = None


def _judge(row: Row, reading: ha_fixture.Reading, names: set[str]) -> Row:
    row.parses = reading.error is None
    row.error = row.error or reading.error
    row.reply = (reading.content or "")[:60] or None
    if reading.tools:
        row.tool = reading.tools[0][0]
        row.exists = row.tool in names
    row.right = row.tool == row.expected if row.conversation >= 0 else None
    return row


# -- one request -----------------------------------------------------------------------------------


def _row(integration: str, call: ha_fixture.Call) -> Row:
    return Row(integration, call.conversation, call.turn, call.n, expected=call.expected_tool)


def run_ollama(client: ollama.Client, call: ha_fixture.Call, names: set[str]) -> Row:
    """One client.chat call, streamed as HA asks."""
    row, chunks, first, t0 = _row("ollama", call), [], None, time.perf_counter()
    try:
        for chunk in client.chat(**call.kwargs):
            chunks.append(chunk)
            if first is None and (chunk.message.content or chunk.message.tool_calls):
                first = time.perf_counter()  # ollama sends a call whole: ready at once
        row.status = 200
    except ollama.ResponseError as err:
        row.status, row.error = err.status_code, str(err.error)[:160]
    except Exception as err:
        row.error = repr(err)[:160]
    row.total_s = round(time.perf_counter() - t0, 3)
    row.ttft_s = row.ready_s = round(first - t0, 3) if first else None
    if chunks:
        row.prompt_tokens = chunks[-1].prompt_eval_count
    return _judge(row, ha_fixture.ha_read_ollama(chunks), names) if row.status == 200 else row


def _usage(row: Row, usage: Any, extra: dict[str, Any] | None) -> None:
    timings = (extra or {}).get("timings") or {}
    if usage is not None:
        row.prompt_tokens = usage.prompt_tokens
        details = getattr(usage, "prompt_tokens_details", None)
        row.cached_tokens = getattr(details, "cached_tokens", None)
    elif timings:
        row.prompt_tokens = timings.get("prompt_n", 0) + timings.get("cache_n", 0)
    if row.cached_tokens is None and "cache_n" in timings:
        row.cached_tokens = timings["cache_n"]


def run_openai(
    client: openai.OpenAI, call: ha_fixture.Call, names: set[str], integration: str = "llama_cpp"
) -> Row:
    """One chat.completions.create call, streamed or not as HA's config flow decided."""
    row, chunks, first, t0 = _row(integration, call), [], None, time.perf_counter()
    ready, call_index = None, None
    try:
        result = client.chat.completions.create(**call.kwargs)
        if call.kwargs.get("stream"):
            for chunk in result:
                chunks.append(chunk)
                now, choice = time.perf_counter(), chunk.choices[0] if chunk.choices else None
                delta = choice.delta if choice else None
                if first is None and delta is not None and (delta.content or delta.tool_calls):
                    first = now
                # HA's reader acts on words at once, on a call when it is complete: the next
                # call's first piece or the finishing chunk (llama_cpp/entity.py).
                piece = delta.tool_calls[0] if delta is not None and delta.tool_calls else None
                done_call = call_index is not None and (
                    (piece is not None and piece.index != call_index)
                    or (choice is not None and choice.finish_reason)
                )
                if ready is None and ((delta is not None and delta.content) or done_call):
                    ready = now
                call_index = piece.index if piece is not None else call_index
            usage = next((c.usage for c in reversed(chunks) if c.usage), None)
            _usage(row, usage, getattr(chunks[-1] if chunks else None, "model_extra", None))
            reading = ha_fixture.ha_read_openai_stream(chunks)
        else:
            first = ready = time.perf_counter()
            _usage(row, result.usage, result.model_extra)
            reading = ha_fixture.ha_read_openai_message(result.choices[0].message)
        row.status = 200
    except openai.APIStatusError as err:
        row.status, row.error = err.status_code, str(err.message)[:160]
    except Exception as err:
        row.error = repr(err)[:160]
    row.total_s = round(time.perf_counter() - t0, 3)
    row.ttft_s = round(first - t0, 3) if first else None
    row.ready_s = round(ready - t0, 3) if ready else None
    if row.status == 200:
        _judge(row, reading, names).role = reading.role if call.kwargs.get("stream") else None
    return row


def run_between(client: openai.OpenAI, model: str) -> Row:
    """One unrelated short request: the prefix HA's next request hopes to find is gone."""
    call = ha_fixture.Call(-1, 0, 0, {"model": model, "messages": BETWEEN, "max_tokens": 24}, None)
    return run_openai(client, call, set(), integration="between")


# -- setup, as each integration's config flow ------------------------------------------------------


def setup_llama_cpp(client: openai.OpenAI, model: str | None) -> tuple[str, bool, list[Row]]:
    """llama_cpp/api.py: models.list (picks the model as recommended_model), then the
    non-streamed and streamed test completions; streaming is on if the streamed one passed."""
    t0, rows, ids = time.perf_counter(), [Row("llama_cpp", -1, 0, 1, 200)], []
    try:
        ids = [m.id for m in client.with_options(timeout=10.0).models.list()]
    except openai.APIError as err:
        rows[0].status, rows[0].error = getattr(err, "status_code", None), str(err)[:160]
    rows[0].total_s = round(time.perf_counter() - t0, 3)
    if model is None:
        model = next(
            (m for m in ha_fixture.RECOMMENDED_CHAT_MODELS if m in ids), ids[0] if ids else ""
        )
    for n, (_name, kwargs) in enumerate(ha_fixture.llama_cpp_setup_calls(model)[1:], 2):
        row = run_openai(client, ha_fixture.Call(-1, 0, n, kwargs, None), set())
        rows.append(row)
        passed = row.status == 200 and row.error is None
    return model, passed, rows


def setup_ollama(client: ollama.Client, model: str | None) -> str:
    """ollama/__init__.py lists the models; HA's form offers the downloaded ones first."""
    with contextlib.suppress(ollama.ResponseError, OSError):  # the chat requests will say more
        listed = sorted(m.model for m in client.list().models if m.model)
        model = model or (listed[0] if listed else None)
    return model or ""


# -- the run ---------------------------------------------------------------------------------------


def _requests(
    integration: str, args: argparse.Namespace, oll: ollama.Client, oai: openai.OpenAI
) -> tuple[list[Row], list[list[ha_fixture.Call]]]:
    """The integration's setup (its rows) and each conversation's requests, as HA makes them."""
    if integration == "ollama":
        model = setup_ollama(oll, args.model)
        return [], [ha_fixture.ollama_calls(c, model=model) for c in range(args.conversations)]
    model, passed, rows = setup_llama_cpp(oai, args.model)
    streaming = passed if args.streaming == "auto" else args.streaming == "yes"
    convs = [ha_fixture.openai_calls(c, streaming, model=model) for c in range(args.conversations)]
    if args.strip_tools:
        # What llama-server does silently with a template that takes no tools: both servers
        # then evaluate the same prompt (the tool results in the history stay).
        convs = [[replace(c, kwargs=_without_tools(c.kwargs)) for c in calls] for calls in convs]
    return rows, convs


def _without_tools(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != "tools"}


def replay(args: argparse.Namespace, url: str) -> list[Row]:
    """Both integrations' conversations, in turn, with the gaps and the interleaved requests."""
    names = {t["function"]["name"] for t in ha_fixture.tools()}
    oai = openai.OpenAI(base_url=f"{url}/v1", api_key=args.api_key or ha_fixture.DEFAULT_API_KEY)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    oll = ollama.Client(host=url, headers=headers)
    between_model = args.model or ""
    if args.between and not between_model:
        between_model = next((m.id for m in oai.models.list()), "")
    rows: list[Row] = []
    started = False
    both = ["ollama", "llama_cpp"]
    for integration in both if args.integration == "both" else [args.integration]:
        setup_rows, conversations = _requests(integration, args, oll, oai)
        rows += setup_rows
        for row in setup_rows:
            _print_row(row)
        for calls in conversations:
            if started and args.gap_s:
                time.sleep(args.gap_s)
            for call in calls:
                if started and args.between:
                    rows.append(run_between(oai, between_model))
                    _print_row(rows[-1])
                started = True
                if integration == "ollama":
                    rows.append(run_ollama(oll, call, names))
                else:
                    rows.append(run_openai(oai, call, names))
                _print_row(rows[-1])
    return rows


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _share(value: float | None, cold: float | None) -> float | None:
    return round(value / cold, 3) if value is not None and cold else None


def _summarise(mine: list[Row]) -> dict[str, Any]:
    """One integration's figures: its first request is the cold one."""
    ok = [r for r in mine if r.status == 200 and r.ttft_s is not None]
    ttft = {id(r): r.ttft_s for r in ok if r.ttft_s is not None}
    cold = mine[0]
    cold_ttft = ttft.get(id(cold))
    opening = [ttft[id(r)] for r in ok if r.turn == 1 and r.call == 1 and r is not cold]
    follow = [ttft[id(r)] for r in ok if not (r.turn == 1 and r.call == 1)]
    prefill = cold.prompt_tokens / cold_ttft if cold_ttft and cold.prompt_tokens else None
    return {
        "calls": len(mine),
        "ok": len(ok),
        "cold_ttft_s": cold_ttft,
        "cold_prompt_tokens": cold.prompt_tokens,
        "cold_prefill_tok_s": round(prefill, 1) if prefill else None,
        "median_ttft_s": _median([r.ttft_s for r in ok if r.ttft_s is not None]),
        "median_ready_s": _median([r.ready_s for r in ok if r.ready_s is not None]),
        "followup_ttft_s": _median(follow),
        "followup_share_of_cold": _share(_median(follow), cold_ttft),
        "new_conversation_ttft_s": _median(opening),
        "new_conversation_share_of_cold": _share(_median(opening), cold_ttft),
        "tool_calls_made": sum(1 for r in ok if r.tool),
        "tool_calls_parsed": sum(1 for r in ok if r.tool and r.parses),
        # Of the calls where HA's recorded conversation called a tool: how often this model
        # called one, and the right one; and calls made where none was expected.
        "tool_expected": len(expected := [r for r in ok if r.expected]),
        "tool_made_when_expected": sum(1 for r in expected if r.tool),
        "right_tool": sum(1 for r in expected if r.right),
        "tool_when_none_expected": sum(1 for r in ok if r.tool and not r.expected),
    }


def summary(rows: list[Row]) -> dict[str, Any]:
    """Per integration: the first call (cold), follow-ups, new conversations' first calls."""
    out: dict[str, Any] = {}
    for integration in ("ollama", "llama_cpp"):
        mine = [r for r in rows if r.integration == integration and r.conversation >= 0]
        if mine:
            out[integration] = _summarise(mine)
    between = [r.total_s for r in rows if r.integration == "between" and r.total_s is not None]
    if between:
        out["between_total_s"] = _median(between)
    return out


# (heading, width) of the table's columns; the error, when there is one, follows the row.
COLUMNS = [("integration", 11), ("conv", 4), ("turn", 4), ("call", 4), ("status", 6)]
COLUMNS += [("ttft_s", 7), ("ready_s", 7), ("total_s", 7), ("prompt", 6), ("cached", 6)]
COLUMNS += [("parses", 6)]
COLUMNS += [("role", 5), ("right", 5), ("tool", 30)]


def _print_row(r: Row) -> None:
    cells = [r.integration, r.conversation, r.turn, r.call, r.status, r.ttft_s, r.ready_s]
    cells += [r.total_s]
    cells += [r.prompt_tokens, r.cached_tokens, r.parses, r.role, r.right, r.tool]
    line = " ".join(
        f"{'-' if c is None else c!s:>{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True)
    )
    print(line + (f"  {r.error}" if r.error else ""), flush=True)


# -- servers of our own ----------------------------------------------------------------------------


class JinjaServer(peers.Server):
    """peers.Server's llama-server with --jinja, one slot, the prompt cache, HA's 8192 context."""

    def __init__(
        self,
        binary: Path,
        model: Path,
        threads: int,
        api_key: str | None,
        template: Path | None,
        extra: list[str],
    ) -> None:
        self.port = free_port()
        self.tokens = 0
        help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True).stdout
        argv = [str(binary), "-m", str(model), "-t", str(threads), "-tb", str(threads)]
        argv += [
            "-c",
            "8192",
            "-np",
            "1",
            "--jinja",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        argv += ["--cache-prompt"] if "--cache-prompt" in help_text else []
        argv += ["--api-key", api_key] if api_key else []
        argv += ["--chat-template-file", str(template)] if template else []
        argv += extra
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_http(f"http://127.0.0.1:{self.port}/health", self.proc)


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def start_server(args: argparse.Namespace, stack: contextlib.ExitStack) -> str:
    """--start-edgellm or --start-llama-server: the server's base URL on loopback."""
    model = models.locate(args.edgellm_model if args.start_edgellm else models.DEFAULT_MODEL, None)
    if args.start_llama_server:
        binary = llamacpp_build.binaries()["llama-server"]
        template = PEER_TEMPLATE if args.peer_template else None
        extra = [a for arg in args.peer_arg for a in arg.split()]
        server = JinjaServer(binary, model, args.threads, args.api_key, template, extra)
        stack.callback(server.close)
        return f"http://127.0.0.1:{server.port}"
    settings: dict[str, Any] = {
        "model": {"n_threads": args.threads, "name": args.edgellm_model},
        "governor": {"thread_sweep": False},
        "limits": {"max_tokens": 3000},  # llama_cpp's max_tokens, honoured rather than capped
        "generation": {"tool_prompt": args.tool_prompt},
    }
    if args.api_key:
        settings["http"] = {"api_key": args.api_key}
    _, daemon = stack.enter_context(serving(settings))
    assert daemon.proc is not None
    _wait_http(f"http://127.0.0.1:{daemon.http_port}/api/version", daemon.proc, 60)
    return f"http://127.0.0.1:{daemon.http_port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:11434", help="server base URL")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--model", default=None, help="default: as HA's config flow picks it")
    ap.add_argument("--integration", choices=["ollama", "llama_cpp", "both"], default="both")
    ap.add_argument(
        "--streaming", nargs="?", const="yes", default="auto", choices=["auto", "yes", "no"]
    )
    ap.add_argument("--gap-s", type=float, default=20.0, help="pause before each conversation")
    ap.add_argument("--conversations", type=int, default=len(ha_fixture.conversations()))
    ap.add_argument("--between", action="store_true", help="an unrelated request before each")
    ap.add_argument("--threads", type=int, default=cpus.usable())
    ap.add_argument("--json", type=Path, default=None, help="write all rows here")
    ap.add_argument("--edgellm-model", default=models.DEFAULT_MODEL, help="--start-edgellm's")
    ap.add_argument(
        "--strip-tools", action="store_true", help="llama_cpp: send no tools (llama-server's view)"
    )
    ap.add_argument(
        "--tool-prompt", choices=["compact", "json"], default="compact", help="--start-edgellm's"
    )
    ap.add_argument(
        "--peer-template",
        action="store_true",
        help="--start-llama-server with a template that renders tools (bench/templates/)",
    )
    ap.add_argument(
        "--peer-arg", action="append", default=[], help="more llama-server flags, e.g. '-fa off'"
    )
    start = ap.add_mutually_exclusive_group()
    start.add_argument("--start-edgellm", action="store_true")
    start.add_argument("--start-llama-server", action="store_true")
    args = ap.parse_args()
    versions = {name: metadata.version(name) for name in HA_PINS}
    if versions != HA_PINS:
        print(f"note: clients {versions}, HA pins {HA_PINS}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        url = args.url
        if args.start_edgellm or args.start_llama_server:
            url = start_server(args, stack)
        print(" ".join(f"{name:>{width}}" for name, width in COLUMNS), flush=True)
        rows = replay(args, url)
    result = {"machine": machine(), "url": url, "clients": versions, "summary": summary(rows)}
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({**result, "rows": [asdict(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
