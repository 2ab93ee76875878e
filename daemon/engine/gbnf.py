"""A client's GBNF grammar, checked before llama.cpp sees it.

llama.cpp's own parser says why a grammar is wrong only on stderr, and a grammar that parses
can still crash the process: when no token can continue it (a character class that admits only
NUL, say), the grammar sampler aborts (llama-grammar.cpp, GGML_ABORT; seen with 0.3.36). This
module follows llama.cpp's grammar syntax (src/llama-grammar.cpp, parse_sequence) to name the
error and its line, and refuses what could leave the sampler with nothing to choose. llama.cpp
still has the last word (structured.Grammars compiles it); this check only explains and guards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_CHARS = 16 * 1024
# A grammar edgellm builds from a request's tools or JSON schema grows with them (Home Assistant's
# 26 Assist tools of a small home: 48k characters); their size is bounded by the body and tool
# limits. llama.cpp parses one this size in milliseconds.
MAX_BUILT_CHARS = 1024 * 1024
# Parentheses nest at most this deep: llama.cpp's parser recurses once per level on the C stack.
MAX_NESTING = 32
# llama.cpp's MAX_REPETITION_THRESHOLD: a larger {m,n} is refused there too.
MAX_REPEAT = 2000
# Code points every byte-level (or byte-fallback) vocabulary can produce: each byte is a token.
# NUL ends llama.cpp's strings and surrogates and values past U+10FFFF are not text.
_PRODUCIBLE = ((0x01, 0xD7FF), (0xE000, 0x10FFFF))
_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
_HEX_RE = re.compile(r"[0-9a-fA-F]*")


class GrammarError(ValueError):
    """The grammar is not one this node runs; the message says why and where."""


def _is_word(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "-")


def _overlaps(ranges: list[tuple[int, int]], low: int, high: int) -> bool:
    return any(lo <= high and low <= hi for lo, hi in ranges)


def _producible(ranges: list[tuple[int, int]], negated: bool) -> bool:
    """Whether some character the class admits can be generated, the way llama.cpp matches it.

    A negated class rejects a partial UTF-8 byte whose possible completions touch any excluded
    range (llama_grammar_match_partial_char), so a character there counts only when its whole
    lead-byte range is free: ASCII, or a lead byte's block of 64, 4096 or 262144 code points.
    """
    ranges = [(lo, hi) for lo, hi in ranges if lo <= hi]  # [z-a] admits nothing
    if not negated:
        return any(_overlaps(ranges, lo, hi) for lo, hi in _PRODUCIBLE)
    blocks = [(c, c) for c in range(0x01, 0x80)]
    blocks += [(b << 6, (b << 6) | 0x3F) for b in range(0x02, 0x20)]  # lead bytes C2-DF
    blocks += [(max(b << 12, 0x800), (b << 12) | 0xFFF) for b in range(0x10)]  # E0-EF
    blocks += [(max(b << 18, 0x10000), (b << 18) | 0x3FFFF) for b in range(0x5)]  # F0-F4
    return any(
        not _overlaps(ranges, lo, hi) and _overlaps(list(_PRODUCIBLE), lo, hi) for lo, hi in blocks
    )


@dataclass
class _Parser:
    text: str
    pos: int = 0
    defined: set[str] = field(default_factory=set)
    used: dict[str, int] = field(default_factory=dict)  # a referenced name: where first

    def fail(self, what: str, at: int | None = None) -> GrammarError:
        at = self.pos if at is None else at
        line = self.text.count("\n", 0, at) + 1
        col = at - (self.text.rfind("\n", 0, at) + 1) + 1
        near = self.text[at : at + 20].split("\n", 1)[0]
        where = f" near {near!r}" if near else " at the end"
        return GrammarError(f"grammar: {what} (line {line}, column {col}{where})")

    def peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.text[i] if i < len(self.text) else ""

    def space(self, newline_ok: bool) -> None:
        while (c := self.peek()) and (c in " \t#" or (newline_ok and c in "\r\n")):
            if c == "#":
                while self.peek() and self.peek() not in "\r\n":
                    self.pos += 1
            else:
                self.pos += 1

    def name(self) -> str:
        start = self.pos
        while _is_word(self.peek()):
            self.pos += 1
        if self.pos == start:
            raise self.fail("expecting a rule name")
        return self.text[start : self.pos]

    def integer(self) -> int:
        start = self.pos
        while self.peek().isascii() and self.peek().isdigit():
            self.pos += 1
        if self.pos == start:
            raise self.fail("expecting an integer")
        return int(self.text[start : self.pos])

    def char(self) -> int:
        c = self.peek()
        if c != "\\":
            self.pos += 1
            return ord(c)
        kind = self.peek(1)
        if kind in _ESCAPES:
            self.pos += 2
            return ord(_ESCAPES[kind])
        if kind not in _HEX_DIGITS:
            raise self.fail("unknown escape")
        size = _HEX_DIGITS[kind]
        digits = _HEX_RE.match(self.text, self.pos + 2, self.pos + 2 + size)
        if digits is None or len(digits.group()) != size:
            raise self.fail(f"expecting {size} hex digits after \\{kind}")
        self.pos += 2 + size
        return int(digits.group(), 16)

    def grammar(self) -> None:
        self.space(True)
        while self.peek():
            self.rule()
        for ref, at in self.used.items():
            if ref not in self.defined:
                raise self.fail(f"rule '{ref}' is used but never defined", at)
        if "root" not in self.defined:
            raise GrammarError("grammar: no 'root' rule: generation starts from root ::= ...")

    def rule(self) -> None:
        name = self.name()
        self.space(False)
        if not self.text.startswith("::=", self.pos):
            raise self.fail("expecting ::=")
        self.pos += 3
        self.space(True)
        self.alternates(0, nested=False)
        if self.peek() == "\r":
            self.pos += 2 if self.peek(1) == "\n" else 1
        elif self.peek() == "\n":
            self.pos += 1
        elif self.peek():
            raise self.fail("expecting a new line or the end")
        self.space(True)
        self.defined.add(name)

    def alternates(self, depth: int, nested: bool) -> None:
        self.sequence(depth, nested)
        while self.peek() == "|":
            self.pos += 1
            self.space(True)
            self.sequence(depth, nested)

    def sequence(self, depth: int, nested: bool) -> None:
        item = False  # whether a repetition here has something to repeat
        while c := self.peek():
            start = self.pos
            if c == '"':
                item = self.literal()
            elif c == "[":
                item = self.char_class()
            elif _is_word(c):
                self.used.setdefault(self.name(), start)
                item = True
            elif c == "(":
                self.group(depth + 1)
                item = True
            elif c == ".":
                self.pos += 1
                item = True
            elif c in "*+?{":
                if not item:
                    raise self.fail(f"'{c}' with nothing before it to repeat")
                self.repetition(nested)
            elif c in "<!":
                raise self.fail("token references (<...>) are not accepted")
            else:
                return
            self.space(nested)

    def literal(self) -> bool:
        self.pos += 1
        n = 0
        while self.peek() != '"':
            if not self.peek():
                raise self.fail("a string is not closed")
            at = self.pos
            if not _producible([(cp := self.char(), cp)], negated=False):
                raise self.fail(f"U+{cp:04X} cannot be generated", at)
            n += 1
        self.pos += 1
        return n > 0

    def char_class(self) -> bool:
        start = self.pos
        self.pos += 1
        negated = self.peek() == "^"
        self.pos += negated
        ranges: list[tuple[int, int]] = []
        while self.peek() != "]":
            if not self.peek():
                raise self.fail("a character class is not closed", start)
            low = self.char()
            high = low
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.pos += 1
                high = self.char()
            ranges.append((low, high))
        self.pos += 1
        if ranges and not _producible(ranges, negated):
            raise self.fail("this character class admits no character a model can generate", start)
        return bool(ranges)

    def group(self, depth: int) -> None:
        if depth > MAX_NESTING:
            raise self.fail(f"parentheses nest deeper than {MAX_NESTING}")
        self.pos += 1
        self.space(True)
        self.alternates(depth, nested=True)
        if self.peek() != ")":
            raise self.fail("expecting ')'")
        self.pos += 1

    def repetition(self, nested: bool) -> None:
        if self.peek() != "{":
            self.pos += 1
            return
        self.pos += 1
        self.space(nested)
        low = self.integer()
        self.space(nested)
        if self.peek() == ",":
            self.pos += 1
            self.space(nested)
            if self.peek().isascii() and self.peek().isdigit():
                self.integer()
                self.space(nested)
        if self.peek() != "}":
            raise self.fail("expecting '}'")
        self.pos += 1
        if low > MAX_REPEAT:
            raise self.fail(f"a repetition of more than {MAX_REPEAT}")


def check(text: str, limit: int = MAX_CHARS) -> None:
    """Raise GrammarError saying what is wrong with a GBNF grammar, or return."""
    if len(text) > limit:
        raise GrammarError(f"grammar: {len(text)} characters; the limit is {limit}")
    if "\x00" in text:
        raise GrammarError("grammar: NUL characters are not allowed")
    _Parser(text).grammar()
