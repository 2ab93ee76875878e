"""A stand-in safety classifier for the tests (policy.classifier: tests.classifiers:Keyword)."""

from __future__ import annotations


class Keyword:
    """Refuses any text that mentions a cannon: enough to prove the seam is called."""

    def check(self, text: str) -> str | None:
        return "mentions a cannon" if "cannon" in text.casefold() else None
