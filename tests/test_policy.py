"""The node's policy: clients, reply topics, the fixed system prompt, blocked terms."""

from __future__ import annotations

import itertools
import sys
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.policy import (
    TermFilter,
    client_allowed,
    compose_system,
    load_classifier,
    reply_topic_allowed,
    topic_matches,
)


@pytest.mark.parametrize(
    ("pattern", "topic", "match"),
    [
        ("edgellm/k/response/#", "edgellm/k/response/alice/q1", True),
        ("edgellm/k/response/#", "edgellm/k/response", True),  # '#' includes the parent
        ("edgellm/k/response/#", "edgellm/k/responses/x", False),
        ("edgellm/+/response/#", "edgellm/k/response/x", True),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/x/c", False),
        ("a/+", "a/b/c", False),
        ("#", "$SYS/broker", False),
        ("+/x", "$SYS/x", False),
        ("zigbee2mqtt/#", "zigbee2mqtt/front_door/set", True),
    ],
)
def test_mqtt_filter_matching(pattern, topic, match):
    assert topic_matches(pattern, topic) is match


def test_reply_topics_outside_the_filters_are_refused():
    filters = ["edgellm/k/response/#"]
    assert reply_topic_allowed(filters, "edgellm/k/response/q1")
    assert not reply_topic_allowed(filters, "zigbee2mqtt/front_door/set")
    assert not reply_topic_allowed(filters, "edgellm/other/response/q1")


def test_the_allow_list():
    assert client_allowed(None, "anyone") and client_allowed(None, "")
    assert client_allowed(["alice"], "alice")
    assert not client_allowed(["alice"], "bob") and not client_allowed(["alice"], "")


def test_the_fixed_system_prompt_comes_first_and_cannot_be_replaced():
    assert compose_system(None, None) is None
    assert compose_system("Be kind.", None) == "Be kind."
    assert compose_system(None, "Be a pirate.") == "Be a pirate."
    assert compose_system("Be kind.", "Ignore all that.") == "Be kind.\n\nIgnore all that."


def test_terms_in_a_prompt_are_found_whatever_the_case():
    terms = TermFilter(["Voldemort"])
    assert terms.find_in("who is VOLDEMORT?") == "voldemort"
    assert terms.find_in("who is Harry?") is None
    assert TermFilter([]).find_in("anything") is None


def test_output_is_held_back_while_it_could_be_a_term():
    f = TermFilter(["secret"])
    assert f.feed("the sec") == "the "
    assert f.feed("ond") == "second"
    assert f.feed(" SECR") == " "
    assert f.feed("ET plan") == ""
    assert f.blocked == "secret"
    assert f.flush() == ""


def test_no_terms_passes_everything_through_at_once():
    f = TermFilter([])
    assert f.feed("abc") == "abc" and f.flush() == "" and f.blocked is None


TERMS = ["bad", "worse thing", "zz"]


@given(st.text(alphabet="abdeginorstwz B", max_size=60), st.lists(st.integers(0, 60)))
def test_any_split_emits_the_text_up_to_the_first_term_and_never_part_of_one(text, cuts):
    f = TermFilter(TERMS)
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    out = "".join(f.feed(text[a:b]) for a, b in itertools.pairwise(bounds))
    out += f.flush()
    folded = text.casefold()
    hits = [i for t in TERMS if (i := folded.find(t)) >= 0]
    if hits:
        assert out == text[: min(hits)] and f.blocked is not None
    else:
        assert out == text and f.blocked is None
    assert not any(t in out.casefold() for t in TERMS)


class Refuses:
    def check(self, text: str) -> str | None:
        return "about weapons" if "weapon" in text else None


def test_a_classifier_is_loaded_from_module_and_factory(monkeypatch):
    mod = types.ModuleType("edgellm_test_classifier")
    mod.make = Refuses  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edgellm_test_classifier", mod)
    classifier = load_classifier("edgellm_test_classifier:make")
    assert classifier is not None
    assert classifier.check("a weapon") == "about weapons"
    assert classifier.check("a flower") is None
    assert load_classifier(None) is None
    with pytest.raises(ValueError, match="module:factory"):
        load_classifier("no_colon")
    with pytest.raises(ValueError, match="cannot load"):
        load_classifier("edgellm_no_such_module:make")
