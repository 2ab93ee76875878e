"""The `edgellm` command: serve, ask, check-config, model."""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
from pathlib import Path
from typing import Any

from daemon import __version__, advise, devbench

EPILOG = """\
examples:
  edgellm serve                          run the daemon on the embedded defaults
  edgellm serve -c /etc/edgellm/config.yaml
  edgellm ask "Why is the sky blue?"     ask the local node, print tokens as they arrive
  edgellm chat                           chat in the terminal; the node keeps the conversation
  edgellm model fetch smollm2-135m       download and verify the default model
  edgellm check-config config.yaml       validate a config file and print the result
  edgellm doctor                         does llama.cpp run on this CPU? (probe once, remember)
  edgellm bench                          measure the default model's speed on this device
  edgellm advise                         which catalog models fit this device, and how fast
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        help="config.yaml (default: embedded defaults or $EDGELLM_CONFIG)",
    )
    p.add_argument("--host", help="broker host (overrides mqtt.host)")
    p.add_argument("--port", type=int, help="broker port (overrides mqtt.port)")
    p.add_argument("--node-id", help="node id (overrides node_id)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgellm",
        description="A private, local LLM answering prompts over MQTT.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgellm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    _common(serve)
    serve.add_argument("--model", help="model to serve (overrides model.name)")

    _add_ask(sub)
    _add_chat(sub)
    _add_simulate(sub)
    _add_doctor(sub)

    check = sub.add_parser("check-config", help="validate a config file and print it")
    check.add_argument("path", type=Path, nargs="?", help="config.yaml (default: embedded)")
    _add_model(sub)
    devbench.add_parser(sub)
    advise.add_parser(sub)
    return parser


def _add_ask(sub: Any) -> None:
    ask = sub.add_parser("ask", help="send a prompt to a node and print the reply")
    _common(ask)
    ask.add_argument("prompt", help="the prompt text ('-' reads standard input)")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--seed", type=int)
    ask.add_argument("--stop", action="append", help="stop string (repeatable)")
    mode = ask.add_mutually_exclusive_group()
    mode.add_argument("--no-stream", action="store_true", help="wait for the whole reply")
    mode.add_argument("--sentences", action="store_true", help="stream whole sentences")
    ask.add_argument(
        "--v311",
        action="store_true",
        help="speak MQTT 3.1.1 (reply address in the payload's reply_to)",
    )
    ask.add_argument("--json", action="store_true", help="print each reply message as JSON")
    ask.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")


def _add_chat(sub: Any) -> None:
    text = "chat with a node in the terminal (it keeps the conversation; Ctrl-C stops an answer)"
    chat = sub.add_parser("chat", help=text, description=_CHAT_TEXT)
    _common(chat)
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--v311", action="store_true", help="speak MQTT 3.1.1")
    chat.add_argument("--timeout", type=float, default=120.0, help="seconds per answer (120)")


_CHAT_TEXT = (
    "An interactive chat over MQTT: each line is a turn of one session, so the node keeps the "
    "history; the answer streams as it comes. Ctrl-C while it answers stops the answer; Ctrl-C "
    "at an empty prompt, Ctrl-D or /quit leaves; /reset starts a new conversation."
)
_SIMULATE_TEXT = (
    "Runs the governor's policy on a virtual clock against a recorded sensor trace (CSV or JSON "
    "lines) or the thermal model (monitor.sim in the config), under a repeating busy/idle load, "
    "and draws temperature, threads, context length and tokens/s over time."
)
_DOCTOR_TEXT = (
    "Loads the configured model in a child process and decodes a few tokens, with and (if that "
    "dies) without weight repacking; prints and remembers the verdict that `serve` uses. A "
    "remembered verdict is printed without probing unless --reprobe."
)


def _add_simulate(sub: Any) -> None:
    text = "run the governor against a trace or the thermal model and draw a PNG"
    sim = sub.add_parser("simulate", help=text, description=_SIMULATE_TEXT)
    sim.add_argument("-c", "--config", type=Path, help="config.yaml (governor and monitor)")
    sim.add_argument("--trace", type=Path, help="replay this trace instead of the thermal model")
    sim.add_argument("--duration", type=float, default=900.0, help="simulated seconds (900)")
    sim.add_argument("--threads", type=int, default=4, help="thread ceiling (default 4)")
    sim.add_argument("--duty", type=float, default=0.8, help="busy fraction of each minute")
    sim.add_argument("--tps", type=float, default=40.0, help="tokens/s of one thread")
    sim.add_argument("--out", type=Path, default=Path("edgellm-simulation.png"))
    sim.add_argument("--csv", type=Path, help="also write every step as CSV")


def _add_doctor(sub: Any) -> None:
    text = "check that llama.cpp runs on this CPU (probe once, remember the verdict)"
    doctor = sub.add_parser("doctor", help=text, description=_DOCTOR_TEXT)
    doctor.add_argument("-c", "--config", type=Path, help="config.yaml (model.*)")
    doctor.add_argument("--reprobe", action="store_true", help="forget the verdict, probe again")


def _add_model(sub: Any) -> None:
    model = sub.add_parser("model", help="list, fetch, locate or verify models")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    for name, text in (
        ("list", "catalog models and what is installed"),
        ("fetch", "download and verify a model"),
        ("path", "print the verified path of an installed model"),
        ("verify", "re-check a model's sha256"),
    ):
        p = msub.add_parser(name, help=text)
        p.add_argument("-c", "--config", type=Path, help="config.yaml (for model.dir)")
        p.add_argument("--dir", type=Path, help="models directory (overrides model.dir)")
        if name != "list":
            p.add_argument(
                "name",
                nargs="?",
                help="catalog name, path, https URL or "
                "hf:owner/repo/file.gguf (default: model.name)",
            )
        if name == "fetch":
            p.add_argument("--force", action="store_true", help="download again")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for attr, key in (
        ("host", "mqtt.host"),
        ("port", "mqtt.port"),
        ("node_id", "node_id"),
        ("model", "model.name"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    return overrides


def _load_config(args: argparse.Namespace) -> Any:
    from daemon import config

    return config.load(getattr(args, "config", None), _overrides(args))


def cmd_serve(args: argparse.Namespace) -> int:
    import structlog

    from daemon import credentials, logsetup
    from daemon.service import Service

    cfg = _load_config(args)
    credentials.check_http_exposure(cfg.http)
    logsetup.configure(cfg.logging.level, cfg.logging.format)
    # The topics' level and the MQTT client id; two nodes must never share it (docs/FLEET.md).
    structlog.get_logger("daemon").info("node", node_id=cfg.node_id)
    # A watchdog SIGABRT then leaves every thread's traceback in the journal (no core dumps).
    faulthandler.enable()
    # SIGUSR2 dumps every thread's stack to the log without stopping: for a daemon that hangs.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    service = Service(cfg, config_path=args.config, overrides=_overrides(args))

    # The handlers only note the signal; the service's main loop acts on it.
    signals = {
        signal.SIGTERM: "stop",
        signal.SIGINT: "stop",
        signal.SIGHUP: "reload",
        signal.SIGUSR1: "sweep",  # measure the thread counts again (e.g. after fitting a fan)
    }

    def note(signum: int, _frame: Any) -> None:
        service.on_signal(signals[signal.Signals(signum)])

    for signum in signals:
        signal.signal(signum, note)
    return service.run()


def cmd_ask(args: argparse.Namespace) -> int:
    from daemon.frontends.client import AskClient, AskOptions

    cfg = _load_config(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    stream = False if args.no_stream else ("sentences" if args.sentences else True)
    fields = {
        key: getattr(args, key)
        for key in ("system", "max_tokens", "temperature", "seed", "stop")
        if getattr(args, key) is not None
    }
    opts = AskOptions(
        stream=stream,
        sentences=args.sentences,
        json_out=args.json,
        v311=args.v311,
        timeout_s=args.timeout,
    )
    return AskClient(cfg, prompt, fields, opts).run()


def cmd_chat(args: argparse.Namespace) -> int:
    from daemon.frontends.chat import ChatClient

    cfg = _load_config(args)
    fields = {
        key: getattr(args, key)
        for key in ("system", "max_tokens", "temperature")
        if getattr(args, key) is not None
    }
    return ChatClient(cfg, fields, v311=args.v311, timeout_s=args.timeout).run()


def cmd_simulate(args: argparse.Namespace) -> int:
    import csv
    import dataclasses

    from daemon import config
    from daemon.governor import boards
    from daemon.governor.policy import ctx_max_of
    from daemon.governor.simulate import Workload, draw, simulate

    cfg = config.load(args.config)
    rows = simulate(
        cfg,
        args.duration,
        workload=Workload(duty=args.duty, tps_one_thread=args.tps),
        trace=args.trace,
        start_threads=args.threads,
    )
    gcfg = boards.resolve(cfg.governor, boards.detect(cfg.monitor.sysfs_root), ctx_max_of(cfg))
    draw(rows, args.out, gcfg.soft_temp_c, gcfg.hard_temp_c)
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[fl.name for fl in dataclasses.fields(rows[0])])
            writer.writeheader()
            writer.writerows(dataclasses.asdict(r) for r in rows)
    temps = [r.cpu_temp_c for r in rows if r.cpu_temp_c is not None]
    changes = [r for r in rows if r.reason]
    print(
        f"{len(rows)} steps, {len(changes)} changes, threads {min(r.threads for r in rows)}"
        f"..{max(r.threads for r in rows)}, peak {max(temps, default=float('nan')):.1f} °C"
    )
    for r in changes[:20]:
        print(f"  t={r.t:6.0f}s  {r.reason}")
    print(f"wrote {args.out}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from daemon import logsetup, models
    from daemon.engine import cpuprobe
    from daemon.engine.llama_compat import TESTED_VERSIONS

    cfg = config_load(args.config)
    logsetup.configure("warning", "console")
    path = models.locate(cfg.model.name, cfg.model.dir)
    cache = cpuprobe.VerdictCache(cpuprobe.state_dir() / cpuprobe.CACHE_NAME)
    print(f"model: {path}")
    print(f"llama-cpp-python: {cpuprobe.build_version()} (tested: {', '.join(TESTED_VERSIONS)})")
    print(f"cpu: {cpuprobe.cpu_model()}")
    print(f"verdicts: {cache.path}")
    if args.reprobe:
        cache.forget(cpuprobe.identity(path))
    try:
        verdict = cpuprobe.decide(cfg.model.cpu_repack, path, cache)
    except cpuprobe.CpuUnsupported as err:
        print(f"verdict: llama.cpp cannot run here. {err}")
        return 5
    print(f"verdict: {verdict.describe()}")
    return 0


def config_load(path: Path | None) -> Any:
    from daemon import config

    return config.load(path)


def cmd_check_config(args: argparse.Namespace) -> int:
    from daemon import config, credentials

    cfg = config.load(args.path)
    credentials.check_http_exposure(cfg.http)
    data = cfg.model_dump(mode="json")
    if data["mqtt"].get("password"):
        data["mqtt"]["password"] = "********"
    import yaml

    print(f"# {args.path or 'embedded defaults'}: valid")
    print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from daemon import config, logsetup, models

    cfg = config.load(args.config)
    logsetup.configure(cfg.logging.level, cfg.logging.format)
    models_dir = args.dir or cfg.model.dir
    if args.model_command == "list":
        for name, path in models.installed(models_dir):
            entry = models.CATALOG.get(name)
            mark = "installed" if path else "not installed"
            desc = f"  {entry.description}" if entry else ""
            default = " (default)" if name == cfg.model.name else ""
            print(f"{name}{default}: {mark}{' ' + str(path) if path else ''}{desc}")
        return 0
    spec = args.name or cfg.model.name
    if args.model_command == "fetch":
        print(models.fetch(spec, models_dir, progress=sys.stderr.isatty(), force=args.force))
    elif args.model_command == "path":
        print(models.locate(spec, models_dir))
    else:
        print(models.verify(spec, models_dir))
    return 0


COMMANDS = {
    "serve": cmd_serve,
    "ask": cmd_ask,
    "chat": cmd_chat,
    "check-config": cmd_check_config,
    "doctor": cmd_doctor,
    "simulate": cmd_simulate,
    "model": cmd_model,
    "bench": devbench.main,
    "advise": advise.main,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edgellm` console script."""
    from daemon.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"edgellm: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        from daemon.models import ModelError

        if isinstance(err, ModelError):
            print(f"edgellm: {err}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
