"""Stop strings and sentence cutting over arbitrarily split streams."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from daemon.engine.textstream import SentenceChunker, StopMatcher


def run_stops(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces)
    if not m.stopped:
        out += m.flush()
    return out, m.stopped


def test_stop_split_across_pieces_is_never_emitted():
    out, stopped = run_stops(["Hello <", "|e", "nd|> more"], ["<|end|>"])
    assert out == "Hello "
    assert stopped


def test_partial_stop_that_is_not_one_is_released():
    m = StopMatcher(["<|end|>"])
    assert m.feed("a <|e") == "a "
    assert m.feed("xtra") == "<|extra"
    assert m.flush() == ""


def test_earliest_of_several_stops_wins():
    out, stopped = run_stops(["one two three"], ["three", "two"])
    assert out == "one "
    assert stopped


def test_overlapping_stops_do_not_depend_on_the_split():
    assert run_stops(["<b<"], ["b", "<b<"]) == run_stops(["<b", "<"], ["b", "<b<"]) == ("<", True)


def test_held_text_is_flushed_at_the_end():
    out, stopped = run_stops(["ends with <|"], ["<|end|>"])
    assert out == "ends with <|"
    assert not stopped


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(text[last:p])
        last = p
    pieces.append(text[last:])
    return pieces


@given(
    st.text(alphabet="ab.<|>\n ", max_size=60),
    st.lists(st.text(alphabet="ab<|>", min_size=1, max_size=4), max_size=3),
    st.lists(st.integers(0, 100), max_size=8),
)
def test_stop_matcher_cuts_at_the_first_stop_to_complete(text, stops, cuts):
    hits = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    expected = text[: min(hits)[1]] if hits else text
    out, stopped = run_stops(_split(text, cuts), stops)
    assert out == expected
    assert stopped == bool(hits)


def test_sentences_are_cut_at_ends_and_newlines():
    c = SentenceChunker(min_chars=1)
    got = c.feed("The sky is blue. It scatters li")
    assert got == ["The sky is blue."]
    got = c.feed("ght! Really?\nYes")
    assert got == ["It scatters light!", "Really?"]
    assert c.flush() == ["Yes"]


def test_decimal_points_and_short_fragments_do_not_cut():
    c = SentenceChunker()
    assert c.feed("Pi is 3.14 roughly. ") == ["Pi is 3.14 roughly."]
    assert c.feed("Hi. Then more words follow. ") == ["Hi. Then more words follow."]


@given(st.text(alphabet="abc .!?\n", max_size=80), st.lists(st.integers(0, 100), max_size=8))
def test_sentences_keep_every_word(text, cuts):
    c = SentenceChunker()
    out = []
    for piece in _split(text, cuts):
        out.extend(c.feed(piece))
    out.extend(c.flush())
    # Cuts fall only on white space, so no word is split or lost.
    assert " ".join(out).split() == text.split()
    assert all(s == s.strip() and s for s in out)
