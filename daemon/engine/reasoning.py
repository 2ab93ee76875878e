"""A reasoning model's thinking kept out of its reply: the `<think>...</think>` block a reply
opens with (Qwen3, DeepSeek-R1 and their distillations write it so) is split off as it streams.

Whatever the request asked, the reasoning never reaches the reply's text, a stream or a voice:
with `think` on it comes back apart (ollama's message.thinking, OpenAI's reasoning_content).
"""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"


class ReasoningSplitter:
    """Feed the reply's text as it comes; get back what belongs to the reply itself."""

    def __init__(self) -> None:
        self._state = "start"  # start (may open a block), thinking, reply
        self._held = ""
        self._thinking: list[str] = []

    @property
    def thinking(self) -> str:
        return "".join(self._thinking).strip()

    def feed(self, text: str) -> str:
        """The reply text this piece releases (none while it may still be reasoning)."""
        if self._state == "reply":
            return text
        self._held += text
        if self._state == "start":
            start = self._held.lstrip()
            if OPEN.startswith(start):
                return ""  # empty, or a prefix of the opening tag: wait
            if not start.startswith(OPEN):
                self._state = "reply"
                out, self._held = self._held, ""
                return out
            self._state, self._held = "thinking", start[len(OPEN) :]
        end = self._held.find(CLOSE)
        if end < 0:
            return ""
        self._thinking.append(self._held[:end])
        rest, self._held = self._held[end + len(CLOSE) :].lstrip(), ""
        self._state = "reply"
        return rest

    def flush(self) -> str:
        """At the end: held text that turned out to be reply (an unclosed block is reasoning)."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            self._thinking.append(held)
            return ""
        return held
