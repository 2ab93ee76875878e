"""Structured output: a JSON schema in the request constrains the reply through a llama.cpp
grammar, and the done reply carries the parsed object."""

from __future__ import annotations

import json
import uuid

import pytest

from daemon.engine import structured
from tests.helpers import Client, Daemon
from tests.shapes import SCHEMA, matches


def test_strings_in_the_grammar_exclude_control_characters():
    assert structured.Grammars().for_schema({"type": "string"}) is not None
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    gbnf = json_schema_to_gbnf(json.dumps(SCHEMA))
    assert structured._LOOSE_CHAR in gbnf  # the converter's rule this module tightens
    assert "\\x00-\\x1F" in gbnf.replace(structured._LOOSE_CHAR, structured._JSON_CHAR)


def test_grammars_are_compiled_once_per_schema():
    grammars = structured.Grammars()
    first = grammars.for_schema(SCHEMA)
    assert grammars.for_schema(json.loads(json.dumps(SCHEMA))) is first
    with pytest.raises(structured.SchemaError, match="json_schema"):
        grammars.for_schema({"type": 5})


def test_the_parsed_reply_or_why_not():
    assert structured.parsed('{"a": 1}') == {"parsed": {"a": 1}}
    cut = structured.parsed('{"a": ')
    assert cut["parsed"] is None and "not complete JSON" in cut["parse_error"]


def ask(client: Client, daemon: Daemon, body: dict) -> dict:
    topic = f"{daemon.prefix}/response/test/{uuid.uuid4().hex}"
    client.subscribe(topic)
    client.publish(f"{daemon.prefix}/request", json.dumps(body), response_topic=topic)
    return client.until_terminal(topic, 120)[-1].body


@pytest.mark.model
@pytest.mark.parametrize("temperature", [0, 0.7])
def test_a_schema_reply_parses_and_matches(client: Client, daemon: Daemon, temperature):
    for ask_text in ("Turn on the kitchen light.", "Switch off the fan in the bedroom."):
        body = {"prompt": ask_text, "json_schema": SCHEMA, "temperature": temperature}
        reply = ask(client, daemon, {**body, "max_tokens": 64})
        assert reply["type"] == "done", reply
        parsed = reply["parsed"]
        assert matches(parsed) and json.loads(reply["text"]) == parsed


@pytest.mark.model
@pytest.mark.parametrize(
    "schema",
    [
        {"type": 5},
        "not an object",
        [1, 2],
        # The converter writes \\d as "\\d", which llama.cpp cannot parse (a NULL sampler:
        # segfault), and [\\x00] as a class no token matches (abort): refused first.
        {"type": "string", "pattern": "^\\d+$"},
        {"type": "string", "pattern": "^[\\x00]$"},
    ],
)
def test_a_bad_schema_is_a_bad_request_and_the_node_goes_on(client: Client, daemon: Daemon, schema):
    reply = ask(client, daemon, {"prompt": "Hi", "json_schema": schema})
    assert reply["type"] == "error" and reply["code"] == "bad_request"
    assert "json_schema" in reply["message"]
    assert ask(client, daemon, {"prompt": "Hi", "max_tokens": 3})["type"] == "done"
