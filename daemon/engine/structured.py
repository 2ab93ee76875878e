"""Structured output: a request's JSON schema as a llama.cpp grammar, and the reply parsed back.

llama-cpp-python turns a JSON schema into GBNF (LlamaGrammar.from_json_schema); the grammar
sampler then lets only tokens that keep the text inside the schema through, so even a 135M model
answers `{"action": "on", "device": "kitchen light"}` and never prose. Compiled grammars are kept
(a voice assistant sends the same schema every time).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from daemon.requests import ErrorCode

_CACHE_SIZE = 16


class SchemaError(ValueError):
    """The schema cannot become a grammar; the message says why."""

    code = ErrorCode.BAD_REQUEST


class Grammars:
    """Compiles schemas to grammars, most recent kept (the worker thread is the only user)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def for_schema(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        grammar = self._cache.get(key)
        if grammar is None:
            grammar = _compile(key)
            self._cache[key] = grammar
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return grammar


# llama-cpp-python's converter lets a JSON string hold raw control characters (a newline, say),
# which no JSON parser accepts: a small model wandered into "kitchen light }\n\nThis is..."
# inside a string. llama.cpp's own converter excludes them; so does this one. Tested: 0.3.36.
_LOOSE_CHAR = r'char ::= [^"\\]'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F]'


def _compile(schema_json: str) -> Any:
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(schema_json).replace(_LOOSE_CHAR, _JSON_CHAR)
        return LlamaGrammar.from_string(gbnf, verbose=False)
    except Exception as err:  # the converter raises several kinds for a schema it cannot take
        raise SchemaError(f"json_schema: cannot be used as a grammar ({err})") from err


def parsed(text: str) -> dict[str, Any]:
    """What the done reply adds: the parsed object, or why the text is not JSON (cut short by
    max_tokens or the context, say)."""
    try:
        return {"parsed": json.loads(text)}
    except ValueError as err:
        return {"parsed": None, "parse_error": f"not complete JSON: {err}"}
