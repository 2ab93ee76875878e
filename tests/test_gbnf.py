"""The GBNF check before llama.cpp: llama.cpp's own grammars pass, each kind of mistake is
named with its line, and what would crash the sampler (a class no token can match) is refused."""

from __future__ import annotations

import json

import pytest
from llama_cpp import llama_grammar

from daemon.engine import gbnf, structured, tools

SCHEMA = {
    "type": "object",
    "properties": {"action": {"enum": ["on", "off"]}, "items": {"type": "array"}},
    "required": ["action"],
}


@pytest.mark.parametrize(
    "grammar",
    [
        llama_grammar.JSON_GBNF,
        llama_grammar.JSON_ARR_GBNF,
        llama_grammar.ARITHMETIC_GBNF,
        llama_grammar.C_GBNF,
        llama_grammar.CHESS_GBNF,
        llama_grammar.LIST_GBNF,
        llama_grammar.json_schema_to_gbnf(json.dumps(SCHEMA)),
        'root ::= "yes" | "no"',
        "root ::= [^\\x01-\\uFFFF] [^\\x00-\\x7F] [^a-z\\x01-\\x7F]",  # classes left to generate
        'root ::= [\\x01] [\\x7f] "é" [\\U0001F600]',
        'root ::= "a"{3} "b"{2,} "c"? "d"{0,5}',
        "root ::= ",
        'root ::= [] "a"',
        'root ::= x  # comment\nx ::= "a" | "b" x\r\n',
        'root ::= (\n  "a" |\n  "b"\n)',
    ],
)
def test_grammars_llama_cpp_takes_pass(grammar):
    gbnf.check(grammar)


@pytest.mark.parametrize(
    ("grammar", "says"),
    [
        ("root ::= foo", "rule 'foo' is used but never defined (line 1, column 10"),
        ("nonsense {{{", "expecting ::= (line 1, column 10"),
        ('x ::= "a"', "no 'root' rule"),
        ("", "no 'root' rule"),
        ('root ::= "a" | "b', "a string is not closed"),
        ("root ::= [a", "a character class is not closed"),
        ("root ::= *", "'*' with nothing before it"),
        ('root ::= ""+', "'+' with nothing before it"),
        ('root ::= "a"{3001}', "a repetition of more than 2000"),
        ('root ::= "a"{x}', "expecting an integer"),
        ('root ::= "a"{1,2', "expecting '}'"),
        ("root ::= <[5]>", "token references"),
        ('root ::= !"a"', "token references"),
        ('root ::= "\\q"', "unknown escape"),
        ('root ::= "\\x4"', "expecting 2 hex digits"),
        ('root ::= "a" )', "expecting a new line or the end"),
        ('root ::= "a"\nfoo bar', "expecting ::= (line 2, column 5"),
        ("root ::= " + "(" * 40 + '"a"' + ")" * 40, "nest deeper than 32"),
        ('root ::= ("a"', "expecting ')'"),
        ("root ::= =", "expecting a new line or the end"),
        # Would leave the sampler with no token and abort the process (llama-grammar.cpp):
        ('root ::= "\\x00"', "U+0000 cannot be generated"),
        ('root ::= "a" [^\\x01-\\U0010FFFF]', "admits no character"),
        ("root ::= [^\\x01-\\U0010FFFD]", "admits no character"),
        ("root ::= [z-a]", "admits no character"),
        ("root ::= [\\U00110000]", "admits no character"),
        ("root ::= [\\uD800-\\uDFFF]", "admits no character"),
        ("root ::= \x00", "NUL"),
        ("root ::= " + "x" * gbnf.MAX_CHARS, "the limit is"),
    ],
)
def test_mistakes_are_named(grammar, says):
    with pytest.raises(gbnf.GrammarError) as err:
        gbnf.check(grammar)
    assert str(err.value).startswith("grammar:")
    assert says in str(err.value)


def test_tool_call_grammars_pass_the_check():
    offered = tools.check_tools(
        [
            {"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}},
            {"type": "function", "function": {"name": "get_time"}},
        ]
    )
    for fmt in ("hermes", "mistral", "json", "edgellm"):
        gbnf.check(structured._call_gbnf(offered, fmt, "required"))
    for fmt in ("hermes", "mistral", "edgellm"):  # text or calls
        gbnf.check(structured._call_gbnf(offered, fmt, "auto"))


def test_grammars_are_cached_and_bad_ones_refused():
    grammars = structured.Grammars()
    first = grammars.for_gbnf('root ::= "yes" | "no"')
    assert grammars.for_gbnf('root ::= "yes" | "no"') is first
    with pytest.raises(structured.SchemaError, match="grammar: rule 'foo'"):
        grammars.for_gbnf("root ::= foo")
