"""The node's policy: clients, reply topics, the fixed system prompt, blocked terms, classifier."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.frontends.topics import Topics
from daemon.safeguards.policy import (
    TermFilter,
    client_allowed,
    compose_system,
    default_reply_filters,
    load_classifier,
    reply_topic_allowed,
    topic_matches,
)


@pytest.mark.parametrize(
    ("pattern", "topic", "match"),
    [
        ("edgellm/k/response/#", "edgellm/k/response/alice/q1", True),
        ("edgellm/k/response/#", "edgellm/k/response", True),  # '#' includes the parent level
        ("edgellm/k/response/#", "edgellm/k/responses/x", False),
        ("edgellm/k/response/#", "edgellm/k", False),
        ("edgellm/+/response/#", "edgellm/k/response/x", True),
        # The examples of MQTT 5.0 section 4.7.1.
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("#", "sport/tennis", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),  # '+' matches an empty level
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/x/c", False),
        ("a/b", "a/b", True),
        ("a/b", "A/b", False),  # topics are case-sensitive
        ("a/b", "a/b/", False),
        # Section 4.7.2: a leading wildcard never matches a topic starting with '$'.
        ("#", "$SYS/broker", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        ("zigbee2mqtt/#", "zigbee2mqtt/front_door/set", True),
    ],
)
def test_mqtt_filter_matching(pattern, topic, match):
    assert topic_matches(pattern, topic) is match


def test_the_default_reply_filter_is_the_nodes_reply_tree():
    assert default_reply_filters("edgellm/kitchen") == ["edgellm/kitchen/response/#"]
    assert default_reply_filters("home/ai/kitchen") == [Topics("home/ai", "kitchen").replies]


def test_reply_topics_outside_the_filters_are_refused():
    """The confused deputy: a request must not steer model output onto a device's topic."""
    filters = default_reply_filters("edgellm/k")
    assert reply_topic_allowed(filters, "edgellm/k/response/q1")
    assert reply_topic_allowed(filters, "edgellm/k/response/alice/q1")
    assert not reply_topic_allowed(filters, "zigbee2mqtt/front_door/set")
    assert not reply_topic_allowed(filters, "edgellm/other/response/q1")
    assert not reply_topic_allowed(filters, "edgellm/k/status")
    assert not reply_topic_allowed([], "edgellm/k/response/q1")
    wider = [*filters, "my/replies/#"]
    assert reply_topic_allowed(wider, "my/replies/x")
    assert not reply_topic_allowed(["#"], "$SYS/broker/x")


def test_the_allow_list():
    assert client_allowed(None, "anyone") and client_allowed(None, "")
    assert client_allowed(["alice"], "alice")
    assert not client_allowed(["alice"], "bob") and not client_allowed(["alice"], "")
    assert not client_allowed(["alice"], "Alice")  # user names are case-sensitive
    assert not client_allowed([], "alice")


def test_the_fixed_system_prompt_comes_first_and_cannot_be_replaced():
    assert compose_system(None, None) is None
    assert compose_system("", "") is None
    assert compose_system("Be kind.", None) == "Be kind."
    assert compose_system(None, "Be a pirate.") == "Be a pirate."
    assert compose_system("Be kind.", "Ignore all that.") == "Be kind.\n\nIgnore all that."


def test_terms_in_a_prompt_are_found_whatever_the_case():
    terms = TermFilter(["Voldemort", "", "straße"])
    assert terms.find_in("who is VOLDEMORT?") == "Voldemort"
    assert terms.find_in("who is Harry?") is None
    assert terms.find_in("Hauptstrasse 1") == "straße"  # casefold: ß is ss
    assert TermFilter([]).find_in("anything") is None
    assert TermFilter([""]).find_in("anything") is None


def test_output_is_held_back_while_it_could_be_a_term():
    f = TermFilter(["secret"])
    assert f.feed("the sec") == "the "
    assert f.feed("ond") == "second"
    assert f.feed(" SECR") == " "
    assert f.feed("ET plan") == ""
    assert f.blocked == "secret"
    assert f.feed("more") == ""
    assert f.flush() == ""


def test_held_back_text_comes_out_at_the_end():
    f = TermFilter(["secret"])
    assert f.feed("a sec") == "a "
    assert f.flush() == "sec"
    assert f.blocked is None


def test_a_longer_term_around_a_shorter_one_is_cut_where_it_starts():
    f = TermFilter(["bc", "abcd"])
    assert f.feed("xa") == "x"
    assert f.feed("bc") == ""
    assert f.blocked == "bc"


def test_a_character_that_folds_to_two_is_never_half_emitted():
    f = TermFilter(["sx"])
    assert f.feed("aß") == "a"
    assert f.feed("x!") == ""  # "ßx" folds to "ssx": the term starts inside the ß
    assert f.blocked == "sx"
    g = TermFilter(["STRASSE"])
    assert g.feed("Die Straße") == "Die "
    assert g.blocked == "STRASSE"
    h = TermFilter(["ss"])
    assert h.feed("Maß") + h.flush() == "Ma"


def test_no_terms_passes_everything_through_at_once():
    for f in (TermFilter([]), TermFilter([""])):
        assert f.feed("abc") == "abc" and f.flush() == "" and f.blocked is None


TERMS = ["bad", "abcd", "bc", "zz", "Worse thing", "dab"]
_FOLDED = [t.casefold() for t in TERMS]


def expected(text: str) -> str:
    """The text before the first place a term starts or may start when the first one ends."""
    folded = text.casefold()
    ends = [folded.find(t) + len(t) for t in _FOLDED if t in folded]
    if not ends:
        return text
    end = min(ends)
    return text[: min(s for s in range(end) if any(t.startswith(folded[s:end]) for t in _FOLDED))]


def pieces(text: str, cuts: list[int]) -> list[str]:
    """text cut at the given places, as a tokenizer might cut it."""
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def run(text: str, cuts: list[int]) -> tuple[str, TermFilter]:
    f = TermFilter(TERMS)
    out = "".join(f.feed(p) for p in pieces(text, cuts))
    return out + f.flush(), f


@given(st.text(alphabet="abcdzB Worsethingß", max_size=60), st.lists(st.integers(0, 60)))
def test_any_split_emits_the_same_text_and_never_part_of_a_term(text, cuts):
    out, f = run(text, cuts)
    whole, _ = run(text, [])
    one_by_one, _ = run(text, list(range(len(text))))
    assert out == whole == one_by_one
    assert text.startswith(out)
    assert not any(t in out.casefold() for t in _FOLDED)
    if any(t in text.casefold() for t in _FOLDED):
        assert f.blocked in TERMS
    else:
        assert out == text and f.blocked is None


@given(st.text(alphabet="abcdzB Worsethin", max_size=60), st.lists(st.integers(0, 60)))
def test_the_output_is_the_text_up_to_the_first_term(text, cuts):
    out, _ = run(text, cuts)
    assert out == expected(text)


@given(st.text(max_size=40), st.lists(st.integers(0, 40)))
def test_text_without_a_term_comes_through_unchanged(text, cuts):
    # The filter matches case-insensitively (casefold): drop every character that folds to "q".
    text = "".join(c for c in text if "q" not in c.casefold())
    f = TermFilter(["q"])
    out = "".join(f.feed(p) for p in pieces(text, cuts))
    assert out + f.flush() == text


class Refuses:
    """A stand-in classifier, loaded by name like policy.classifier would name a real one."""

    def check(self, text: str) -> str | None:
        return "about weapons" if "weapon" in text else None


def broken() -> Refuses:
    raise RuntimeError("no model file")


def not_a_classifier() -> object:
    return object()


def test_a_classifier_is_loaded_from_module_and_factory():
    classifier = load_classifier(f"{__name__}:Refuses")
    assert classifier is not None
    assert classifier.check("a weapon") == "about weapons"
    assert classifier.check("a flower") is None


def test_no_classifier_by_default():
    assert load_classifier(None) is None


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("no_colon", "module:factory"),
        (":make", "module:factory"),
        ("edgellm_no_such_module:make", "cannot load"),
        (f"{__name__}:no_such_factory", "cannot load"),
        (f"{__name__}:broken", "no model file"),
        (f"{__name__}:not_a_classifier", "check"),
    ],
)
def test_a_classifier_that_cannot_be_had_is_a_clear_config_error(spec, says):
    with pytest.raises(ValueError, match=says) as err:
        load_classifier(spec)
    assert spec in str(err.value)
