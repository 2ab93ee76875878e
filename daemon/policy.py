"""What this node will do for whom: clients, reply topics, the system prompt, blocked terms,
and the seam for a safety classifier. Pure functions and small classes, no I/O."""

from __future__ import annotations

import importlib
from typing import Protocol


def client_allowed(allowed: list[str] | None, client: str) -> bool:
    """Whether client may ask; None allows every client ('' is the plain request topic)."""
    return allowed is None or client in allowed


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching (MQTT 5 spec 4.7): '+' one level, '#' this level and all
    below; a filter starting with a wildcard never matches a '$' topic."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    p_levels, t_levels = pattern.split("/"), topic.split("/")
    for i, p in enumerate(p_levels):
        if p == "#":
            return True
        if i >= len(t_levels):
            return False
        if p != "+" and p != t_levels[i]:
            return False
    return len(p_levels) == len(t_levels)


def reply_topic_allowed(filters: list[str], topic: str) -> bool:
    """Whether the daemon may publish a reply on topic."""
    return any(topic_matches(f, topic) for f in filters)


def compose_system(fixed: str | None, requested: str | None) -> str | None:
    """The system prompt: the node's fixed one first, a request's own after it, never instead."""
    parts = [p for p in (fixed, requested) if p]
    return "\n\n".join(parts) if parts else None


class TermFilter:
    """Blocked terms, case-insensitive, in prompts and in streamed output.

    Like textstream.StopMatcher, text that could be the start of a blocked term is held back
    until the next piece shows whether it is: no part of a blocked term is ever emitted.
    """

    def __init__(self, terms: list[str] | tuple[str, ...]):
        self._terms = tuple(t.casefold() for t in terms if t)
        self._held = ""
        self.blocked: str | None = None

    def find_in(self, text: str) -> str | None:
        """The first blocked term found in text, or None."""
        folded = text.casefold()
        return next((t for t in self._terms if t in folded), None)

    def feed(self, piece: str) -> str:
        """Add output text; return what is now safe to emit ('' once a term was met)."""
        if self.blocked is not None:
            return ""
        if not self._terms:
            return piece
        text = self._held + piece
        folded = text.casefold()
        hits = [(i, t) for t in self._terms if (i := folded.find(t)) >= 0]
        if hits:
            start, term = min(hits)
            self.blocked, self._held = term, ""
            return _prefix_before(text, folded, start)
        keep = self._longest_partial_suffix(folded)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text at the end of generation."""
        held, self._held = self._held, ""
        return "" if self.blocked is not None else held

    def _longest_partial_suffix(self, folded: str) -> int:
        best = 0
        for term in self._terms:
            for n in range(min(len(term) - 1, len(folded)), best, -1):
                if folded.endswith(term[:n]):
                    best = n
                    break
        return best


def _prefix_before(text: str, folded: str, start: int) -> str:
    # casefold can change lengths (ß -> ss); cut where the folded prefix ends in the original.
    if len(text) == len(folded):
        return text[:start]
    for cut in range(len(text), -1, -1):
        if len(text[:cut].casefold()) <= start:
            return text[:cut]
    return ""


class Classifier(Protocol):
    """A safety classifier: None if the text is fine, else a short reason."""

    def check(self, text: str) -> str | None: ...


def load_classifier(spec: str | None) -> Classifier | None:
    """The classifier named 'module:factory' (policy.classifier), or None when off."""
    if spec is None:
        return None
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise ValueError(f"policy.classifier: {spec!r} is not 'module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"policy.classifier: cannot load {spec!r}: {err}") from None
    classifier: Classifier = factory()
    return classifier
