"""What this node will do for whom: clients, reply topics, the system prompt, blocked terms,
and the seam for a safety classifier. Pure functions and small classes, no I/O."""

from __future__ import annotations

import bisect
import importlib
from typing import Protocol

from daemon.frontends.topics import Topics


def client_allowed(allowed: list[str] | None, client: str) -> bool:
    """Whether client may ask; None allows every client ('' is the plain request topic)."""
    return allowed is None or client in allowed


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching (MQTT 5.0 section 4.7): '+' one level, '#' this level and all
    below it, the parent included; a filter starting with a wildcard never matches a '$' topic."""
    # 4.7.2: "$SYS/#" must be named to be matched, so a "#" in policy.reply_topics can never send
    # model output into the broker's own tree.
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    p_levels, t_levels = pattern.split("/"), topic.split("/")
    for i, p in enumerate(p_levels):
        if p == "#":
            # 4.7.1.2: "sport/#" also matches "sport", so i may equal len(t_levels) here.
            return True
        if i >= len(t_levels):
            return False
        if p != "+" and p != t_levels[i]:
            return False
    return len(p_levels) == len(t_levels)


def reply_topic_allowed(filters: list[str], topic: str) -> bool:
    """Whether the daemon may publish a reply on topic: it matches one of the filters."""
    return any(topic_matches(f, topic) for f in filters)


def default_reply_filters(base: str) -> list[str]:
    """The reply topics always allowed to the node at base ('<prefix>/<node>'): its reply tree."""
    # The topic string itself is built in topics.py; node ids never contain '/' (config.py).
    prefix, _, node_id = base.rpartition("/")
    return [Topics(prefix, node_id).replies]


def compose_system(fixed: str | None, requested: str | None) -> str | None:
    """The system prompt: the node's fixed one first, a request's own after it, never instead."""
    parts = [p for p in (fixed, requested) if p]
    return "\n\n".join(parts) if parts else None


class TermFilter:
    """Blocked terms, case-insensitive (str.casefold), in prompts and in streamed output.

    Like textstream.StopMatcher, text that could be the start of a blocked term is held back
    until the next piece shows whether it is, so no part of a blocked term is ever emitted. The
    output does not depend on how the text is split into pieces: it is the text before the first
    place where a term starts, or might start, when the term that ends first is met.
    """

    def __init__(self, terms: list[str] | tuple[str, ...]):
        # Folded form -> the term as configured (for logs); duplicates after folding kept once.
        self._terms: dict[str, str] = {}
        for term in terms:
            if term:
                self._terms.setdefault(term.casefold(), term)
        self._longest = max(map(len, self._terms), default=0)
        self._held = ""
        self.blocked: str | None = None

    def find_in(self, text: str) -> str | None:
        """The first configured term found in text (any case), or None."""
        folded = text.casefold()
        return next((term for key, term in self._terms.items() if key in folded), None)

    def feed(self, piece: str) -> str:
        """Add output text; return what is now safe to emit ('' once a term was met)."""
        if self.blocked is not None:
            return ""
        if not self._terms:
            return piece
        text = self._held + piece
        folded, starts = _fold(text)
        # The term that ends first is the one a token-by-token stream meets first.
        hits = [(i + len(k), -len(k), k) for k in self._terms if (i := folded.find(k)) >= 0]
        if hits:
            end, _, key = min(hits)
            self.blocked, self._held = self._terms[key], ""
            # Not only the term: a longer one that began earlier ("abcd" around "bc") is cut too.
            return text[: _chars_before(starts, self._first_start(folded[:end]))]
        cut = _chars_before(starts, self._first_start(folded))
        self._held = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        """The held-back text at the end of generation ('' once a term was met)."""
        held, self._held = self._held, ""
        return "" if self.blocked is not None else held

    def _first_start(self, folded: str) -> int:
        """Where the earliest tail of folded that begins some term starts (len if none)."""
        for s in range(max(0, len(folded) - self._longest), len(folded)):
            tail = folded[s:]
            if any(k.startswith(tail) for k in self._terms):
                return s
        return len(folded)


def _fold(text: str) -> tuple[str, list[int] | None]:
    """text.casefold() and where each character of text starts in it (None: one to one)."""
    folded = text.casefold()
    if len(folded) == len(text):
        # casefold never shortens a character, so equal lengths mean each maps to one.
        return folded, None
    starts = [0]
    for ch in text:
        starts.append(starts[-1] + len(ch.casefold()))
    return folded, starts


def _chars_before(starts: list[int] | None, pos: int) -> int:
    """How many characters of text fold to text that ends at or before folded position pos."""
    # A character that folds to several ("ß" -> "ss") and is cut in two counts as after pos:
    # held back or dropped, never half emitted.
    return pos if starts is None else bisect.bisect_right(starts, pos) - 1


class Classifier(Protocol):
    """A safety classifier: None if the text is fine, else a short reason."""

    def check(self, text: str) -> str | None: ...


def load_classifier(spec: str | None) -> Classifier | None:
    """The classifier that 'module:factory' (policy.classifier) makes, or None when off."""
    if spec is None:
        return None
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise ValueError(f"policy.classifier: {spec!r} is not 'module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"policy.classifier: cannot load {spec!r}: {err}") from None
    try:
        classifier = factory()
    except Exception as err:
        # Someone else's code at start-up: its failure is a config error, not a crash.
        raise ValueError(f"policy.classifier: {spec!r} failed: {err!r}") from None
    if not callable(getattr(classifier, "check", None)):
        raise ValueError(f"policy.classifier: {spec!r} made an object without check(text)")
    checked: Classifier = classifier
    return checked
