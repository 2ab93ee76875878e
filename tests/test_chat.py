"""`edgellm chat` under a real terminal (tmux): streamed answers, a conversation the node keeps,
Ctrl-C that stops the answer and not the program, /reset, Ctrl-D."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.frontends import chat
from tests.helpers import Daemon, poll

REQUIRE = os.environ.get("EDGELLM_REQUIRE_MODEL") == "1"
REPO = Path(__file__).resolve().parent.parent


def test_lines_are_prompts_or_commands():
    assert chat.command("hello") is None
    assert chat.command("  /reset ") == "reset"
    assert chat.command("/QUIT") == "quit"
    assert chat.command("/help me") == "help"
    assert chat.command("/frobnicate") == "unknown"
    assert chat.command("/") == "unknown"


class Pane:
    """A program in a detached tmux session of its own, driven by keys, read from the screen."""

    def __init__(self, command: str):
        self.socket = f"edgellm-test-{uuid.uuid4().hex[:8]}"
        self._tmux("new-session", "-d", "-s", "t", "-x", "160", "-y", "50", command)

    def _tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return out.stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", line)
        self.keys("Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-500")

    def until(self, check: Callable[[str], bool], what: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if check(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {what}; the screen:\n{text}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def pane(daemon: Daemon) -> Iterator[Pane]:
    if shutil.which("tmux") is None:
        if REQUIRE:
            raise RuntimeError("tmux is not installed (tests/run.sh installs it)")
        pytest.skip("tmux is not installed")
    cmd = [sys.executable, "-m", "daemon", "chat", "-c", str(daemon.config_path)]
    cmd += ["--max-tokens", "400"]
    # The shell stays after the program ends, so its exit code can be read off the screen.
    line = f'cd {shlex.quote(str(REPO))} && {shlex.join(cmd)}; echo "[exit $?]"; sleep 600'
    p = Pane(line)
    try:
        yield p
    finally:
        p.close()


def prompts(text: str) -> int:
    return len(re.findall(r"^you> ", text, re.MULTILINE))


def sessions_logged(daemon: Daemon, session: str) -> list[int]:
    events = daemon.log_events()
    return [e["session"]["messages"] for e in events if e.get("session", {}).get("id") == session]


@pytest.mark.model
def test_a_terminal_chat_streams_remembers_stops_and_ends(pane: Pane, daemon: Daemon):
    banner = pane.until(lambda s: prompts(s) == 1, "the banner and a prompt", 60)
    session = re.search(r"session ([0-9a-f]{16})", banner)
    assert session is not None, banner
    node = f"{daemon.node_id}> "

    pane.type("Name a colour.")
    pane.until(lambda s: prompts(s) == 2, "the answer and the next prompt")
    pane.type("And another one?")
    pane.until(lambda s: prompts(s) == 3, "the second answer")
    # The node kept the conversation: the second turn had the first before it.
    poll(lambda: sessions_logged(daemon, session.group(1)) == [2, 4], 10, "both turns logged")

    pane.type("Write a very long story about a dragon who learns to bake bread.")
    # Ctrl-C once the answer is streaming: it stops the answer, not the program.
    pane.until(
        lambda s: (
            re.search(rf"^{re.escape(node)}\S", s, re.MULTILINE | re.DOTALL) is not None
            and s.count(node) == 3
        ),
        "the story streaming",
    )
    before = len([e for e in daemon.log_events() if e.get("outcome") == "cancelled"])
    pane.keys("C-c")
    pane.until(lambda s: "[stopped]" in s and prompts(s) == 4, "the answer stopped")
    poll(
        lambda: len([e for e in daemon.log_events() if e.get("outcome") == "cancelled"]) > before,
        10,
        "the node to log the cancelled answer",
    )
    assert sessions_logged(daemon, session.group(1)) == [2, 4]  # a stopped turn is not kept

    pane.type("Hi.")
    pane.until(lambda s: prompts(s) == 5, "an answer after the stop")

    pane.type("/reset")
    pane.until(lambda s: "[a new conversation" in s and prompts(s) == 6, "the reset")
    pane.type("/nonsense")
    pane.until(lambda s: "unknown command" in s, "the unknown command")

    # Ctrl-C on a half-typed line clears the line; the program stays.
    pane.keys("-l", "half a thought")
    pane.until(lambda s: "half a thought" in s, "the typing")
    pane.keys("C-c")
    pane.until(lambda s: prompts(s) == 8, "a fresh prompt after clearing the line")

    pane.keys("C-d")
    pane.until(lambda s: "[exit 0]" in s, "the program to end with 0")


@pytest.mark.model
def test_an_unreachable_broker_is_one_clear_line(tmp_path: Path):
    from tests.helpers import free_port

    out = subprocess.run(
        [sys.executable, "-m", "daemon", "chat", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        input="",
    )
    assert out.returncode == 1
    assert "cannot reach the broker" in out.stderr
