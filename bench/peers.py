"""Side by side, in one run: edgellm over MQTT against llama.cpp's own server and bench, and
llama-cpp-python in process, on the same model, threads, prompt and sampling.

    python -m bench.peers [--runs 5] [--threads N] [--tokens 128] [--load 0.25] [--chart PNG]

Paths (each measured `--runs` times after a warm-up, the paths taking turns round by round so
that drift and noise fall on all of them alike):
- `inproc`: llama-cpp-python in a child process, create_chat_completion(stream=True);
- `server`: `llama-server`, streamed `/v1/chat/completions` (SSE), and not streamed;
- `edgellm`: the daemon over MQTT v5 on a loopback mosquitto, `stream: true`, and not streamed;
- `llama-bench` tg and pp at the same threads (its own figure, for the engine's limit).
llama-server and llama-bench are built from the llama.cpp source the installed llama-cpp-python
vendors (bench/llamacpp_build.py; cached). Weight repacking is off everywhere.

Figures per path: decode tok/s (client side: (tokens - 1) / (last - first token)), TTFT (every
path reuses the repeated prompt's KV cache, so this is the warm TTFT: bench/prompt_cache.py has
cold vs warm), end-to-end tok/s (not streamed: tokens / request time), peak RSS; prefill tok/s
from llama-bench's pp64 (the engine's own prompt speed).
`--load F` runs a process busy F of each 100 ms (on one core) during every measurement.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench import llamacpp_build
from bench.common import Broker, Daemon, Tally, free_port, machine, workdir
from daemon import cpus, models

PROMPT = "Write a long story about a lighthouse keeper and the sea."
REPEAT_PENALTY = 1.1  # edgellm's default; passed to every peer so all make the same tokens


# -- background load ------------------------------------------------------------------------------


def _busy(share: float, stop: Any) -> None:
    while not stop.is_set():
        end = time.perf_counter() + 0.1 * share
        while time.perf_counter() < end:
            pass
        time.sleep(0.1 * (1 - share))


class Load:
    """A process busy `share` of every 100 ms while measuring (none when share is 0)."""

    def __init__(self, share: float):
        self.share = share
        self._stop = multiprocessing.Event()
        self._proc: multiprocessing.Process | None = None

    def __enter__(self) -> Load:
        if self.share > 0:
            self._stop.clear()
            self._proc = multiprocessing.Process(target=_busy, args=(self.share, self._stop))
            self._proc.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._proc is not None:
            self._stop.set()
            self._proc.join(5)
            self._proc = None


# -- llama-cpp-python in a child process ----------------------------------------------------------


def _inproc_child(model: str, threads: int, tokens: int) -> None:
    """Reads a line per run on stdin, answers one JSON line of timings on stdout."""
    import resource

    from daemon.engine import llama_compat

    llm = llama_compat.load_llama(
        model, repack=False, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    messages = [{"role": "user", "content": PROMPT}]
    for _line in sys.stdin:
        stamps: list[float] = []
        t0 = time.perf_counter()
        for chunk in llm.create_chat_completion(
            messages,
            stream=True,
            max_tokens=tokens,
            temperature=0.0,
            repeat_penalty=REPEAT_PENALTY,
        ):
            if chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(_stream_figures(t0, stamps, len(stamps), rss)), flush=True)


def _stream_figures(t0: float, stamps: list[float], n_tokens: int, rss: float) -> dict[str, Any]:
    first, last = stamps[0], stamps[-1]
    return {
        "decode_tps": (n_tokens - 1) / (last - first) if last > first else 0.0,
        "ttft_ms": (first - t0) * 1000,
        "tokens": n_tokens,
        "peak_rss_mib": rss,
    }


class InProcess:
    def __init__(self, model: Path, threads: int, tokens: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.peers", "--child", str(model), str(threads), str(tokens)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def stream(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# -- llama-server ---------------------------------------------------------------------------------


def sse_stream(port: int, body: str, pid: int) -> dict[str, Any]:
    """A streamed OpenAI-style chat completion: decode speed from the chunks' arrival times.

    The token count is the usage the server reports when asked (stream_options.include_usage),
    else the number of content chunks; edgellm joins tokens into fewer chunks (its first chunk
    is the first token alone), so its count must come from usage.
    """
    request = json.loads(body)
    request["stream_options"] = {"include_usage": True}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(request), {"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    stamps: list[float] = []
    tokens = None
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    conn.close()
    return _stream_figures(t0, stamps, tokens or len(stamps), rss_peak(pid))


class Server:
    def __init__(self, binary: Path, model: Path, threads: int, tokens: int):
        self.port = free_port()
        self.tokens = tokens
        self.proc = subprocess.Popen(
            [
                str(binary),
                "-m",
                str(model),
                "-t",
                str(threads),
                "-tb",
                str(threads),
                "-c",
                "2048",
                "-np",
                "1",
                "--no-repack",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self._get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("llama-server did not start")

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()

    def _body(self, stream: bool) -> str:
        return json.dumps(
            {
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": self.tokens,
                "temperature": 0.0,
                "repeat_penalty": REPEAT_PENALTY,
                "stream": stream,
            }
        )

    def stream(self) -> dict[str, Any]:
        return sse_stream(self.port, self._body(True), self.proc.pid)

    def whole(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        t0 = time.perf_counter()
        conn.request(
            "POST", "/v1/chat/completions", self._body(False), {"Content-Type": "application/json"}
        )
        body = json.loads(conn.getresponse().read())
        seconds = time.perf_counter() - t0
        conn.close()
        n = body["usage"]["completion_tokens"]
        return {"e2e_tps": n / seconds, "e2e_ms": seconds * 1000, "tokens": n}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def rss_peak(pid: int) -> float:
    """Peak resident memory of a process (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return psutil.Process(pid).memory_info().rss / 2**20


# -- edgellm over MQTT ----------------------------------------------------------------------------


class Edgellm:
    def __init__(self, broker: Broker, threads: int, tokens: int, root: Path):
        self.tokens = tokens
        settings = {
            "model": {"n_threads": threads},
            "governor": {"thread_sweep": False},
            "generation": {"repeat_penalty": REPEAT_PENALTY},
            "limits": {"max_tokens": max(tokens, 1024)},
            "policy": {"reply_topics": ["bench/#"]},
        }
        self.daemon = Daemon(broker, root, settings=settings).start()
        self.tally = Tally(broker, f"bench/peers/{uuid.uuid4().hex[:6]}")

    def _ask(self, stream: bool) -> tuple[str, float]:
        rid = uuid.uuid4().hex[:12]
        body = {"prompt": PROMPT, "max_tokens": self.tokens, "temperature": 0, "stream": stream}
        self.tally.send(f"{self.daemon.prefix}/request", rid, body)
        t0 = self.tally.sent_at[rid]
        if not self.tally.wait_all([rid], 120):
            raise RuntimeError("edgellm did not answer")
        return rid, t0

    def stream(self) -> dict[str, Any]:
        rid, t0 = self._ask(True)
        done = self.tally.terminal[rid][0]
        n = done["usage"]["completion_tokens"]
        first, last = self.tally.first_at[rid], self.tally.terminal_at[rid]
        # The first delta is the first token alone (sent at once); the rest are coalesced.
        fig = _stream_figures(t0, [first, last], n, 0.0)
        fig["peak_rss_mib"] = rss_peak(self.daemon.proc.pid)  # type: ignore[union-attr]
        return fig

    def http_stream(self) -> dict[str, Any]:
        """The same request through edgellm's OpenAI-compatible HTTP API (issue 10)."""
        body = {
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": self.tokens,
            "temperature": 0.0,
            "stream": True,
        }
        assert self.daemon.proc is not None
        return sse_stream(self.daemon.http_port, json.dumps(body), self.daemon.proc.pid)

    def whole(self) -> dict[str, Any]:
        rid, t0 = self._ask(False)
        done = self.tally.terminal[rid][0]
        seconds = self.tally.terminal_at[rid] - t0
        n = done["usage"]["completion_tokens"]
        # What MQTT adds: the client's round trip minus the daemon's own arrival-to-done time.
        overhead = seconds * 1000 - done["timings"]["total_ms"]
        return {
            "e2e_tps": n / seconds,
            "e2e_ms": seconds * 1000,
            "tokens": n,
            "mqtt_overhead_ms": overhead,
        }

    def close(self) -> None:
        self.tally.close()
        self.daemon.stop()


# -- llama-bench ----------------------------------------------------------------------------------


def llama_bench(binary: Path, model: Path, threads: int, tokens: int, runs: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            str(binary),
            "-m",
            str(model),
            "-t",
            str(threads),
            "-p",
            "64",
            "-n",
            str(tokens),
            "-r",
            str(runs),
            "-o",
            "json",
            "--repack",
            "0",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures: dict[str, Any] = {}
    for row in json.loads(out):
        kind = "tg" if row["n_gen"] else "pp"
        figures[f"{kind}_tps"] = round(row["avg_ts"], 1)
        figures[f"{kind}_tps_stdev"] = round(row["stddev_ts"], 1)
    return figures


# -- the run --------------------------------------------------------------------------------------


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model = models.locate(models.DEFAULT_MODEL, None)
    bins = llamacpp_build.binaries()
    broker = Broker(free_port(), workdir()).start()
    paths: dict[str, Any] = {}
    try:
        inproc = InProcess(model, args.threads, args.tokens)
        server = Server(bins["llama-server"], model, args.threads, args.tokens)
        edge = Edgellm(broker, args.threads, args.tokens, workdir())
        calls = {
            "inproc_stream": inproc.stream,
            "server_stream": server.stream,
            "edgellm_stream": edge.stream,
            "server_whole": server.whole,
            "edgellm_whole": edge.whole,
            "edgellm_http_stream": edge.http_stream,
        }
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in calls}
        with Load(args.load):
            for call in calls.values():  # warm-up: caches, pages, the prompt's KV
                call()
            names = list(calls)
            for r in range(args.runs):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    rows[name].append(calls[name]())
            bench = llama_bench(bins["llama-bench"], model, args.threads, args.tokens, args.runs)
        for name, got in rows.items():
            keys = sorted({k for row in got for k in row})
            paths[name] = {k: _median(got, k) for k in keys}
            for k in ("decode_tps", "e2e_tps"):
                if k in keys:
                    paths[name][f"{k}_all"] = [round(row[k], 1) for row in got]
        paths["llama_bench"] = bench
    finally:
        for closer in ("inproc", "server", "edge"):
            part = locals().get(closer)
            if part is not None:
                part.close()
        broker.stop()
    return paths


def ratios(p: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    edge_s, edge_w = p["edgellm_stream"], p["edgellm_whole"]
    return {
        "edgellm/server streamed decode": ratio(
            edge_s["decode_tps"], p["server_stream"]["decode_tps"]
        ),
        "edgellm/llama-bench tg": ratio(edge_s["decode_tps"], p["llama_bench"].get("tg_tps")),
        "edgellm/inproc streamed decode": ratio(
            edge_s["decode_tps"], p["inproc_stream"]["decode_tps"]
        ),
        "edgellm/server end to end": ratio(edge_w["e2e_tps"], p["server_whole"]["e2e_tps"]),
        "edgellm HTTP/server streamed decode": ratio(
            p["edgellm_http_stream"]["decode_tps"], p["server_stream"]["decode_tps"]
        ),
        "edgellm/server TTFT": ratio(edge_s["ttft_ms"], p["server_stream"]["ttft_ms"]),
    }


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = result["paths"]
    names = ["llama-bench tg", "in process", "llama-server", "edgellm MQTT"]
    values = [
        p["llama_bench"].get("tg_tps", 0),
        p["inproc_stream"]["decode_tps"],
        p["server_stream"]["decode_tps"],
        p["edgellm_stream"]["decode_tps"],
    ]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(names, values, color=["#999", "#999", "#c66", "#36c"])
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.1f}", va="center")
    ax.set_xlabel("streamed decode, tokens/s (median)")
    ax.set_title(
        f"{result['threads']} threads, load {result['load']:.0%}: {result['machine'][:60]}",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _inproc_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=cpus.usable())
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--load", type=float, default=0.0, help="share of one core busy elsewhere")
    ap.add_argument("--chart", type=Path, default=None)
    args = ap.parse_args()
    result: dict[str, Any] = {
        "bench": "peers",
        "machine": machine(),
        "threads": args.threads,
        "tokens": args.tokens,
        "load": args.load,
        "runs": args.runs,
    }
    result["paths"] = measure(args)
    result["ratios"] = ratios(result["paths"])
    print(json.dumps(result, indent=2))
    if args.chart is not None:
        chart(result, args.chart)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
