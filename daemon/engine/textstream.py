"""Pure text plumbing for streamed generation: stop strings held back, sentences cut for speech."""

from __future__ import annotations

import re


class StopMatcher:
    """Finds stop strings in streamed text without ever emitting part of one.

    Text that could be the start of a stop string is held back until the next piece shows
    whether it is (then generation ends and the stop string is dropped) or is not.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add generated text; return what is now safe to emit."""
        if self.stopped:
            return ""
        if not self._stops:
            return piece
        text = self._held + piece
        # The match that ends first is the one a token-by-token stream meets first, so the
        # result does not depend on how the text was split into pieces.
        hits = [(i + len(s), i) for s in self._stops if (i := text.find(s)) >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[: min(hits)[1]]
        keep = self._longest_partial_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text, once generation has ended for another reason."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_partial_suffix(self, text: str) -> int:
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


# A sentence ends at . ! ? … (optionally followed by closing quotes or brackets) before
# white space, or at a line break. "3.14" and "e.g.x" do not end one: white space must follow.
_SENTENCE_END = re.compile(r"""(?:[.!?…]+["'”’)\]]*\s+|\n+)""")  # noqa: RUF001


class SentenceChunker:
    """Cuts streamed text into whole sentences, so a speech engine can start on the first."""

    def __init__(self, min_chars: int = 12):
        # Very short "sentences" ("Hi.", "1.") are joined to the next to sound natural.
        self._min_chars = min_chars
        self._buf = ""

    def feed(self, piece: str) -> list[str]:
        """Add text; return the sentences it completed (trailing white space stripped)."""
        self._buf += piece
        out: list[str] = []
        start = 0
        for m in _SENTENCE_END.finditer(self._buf):
            candidate = self._buf[start : m.end()].strip()
            if (
                len(candidate) < self._min_chars
                and m.group().strip() != ""
                and "\n" not in m.group()
            ):
                continue
            if candidate:
                out.append(candidate)
            start = m.end()
        self._buf = self._buf[start:]
        return out

    def flush(self) -> list[str]:
        """Whatever remains at the end of generation."""
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []
