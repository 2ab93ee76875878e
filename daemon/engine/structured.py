"""Structured output: a request's JSON schema, GBNF grammar or required tool call as a
llama.cpp grammar, and the JSON reply parsed back.

llama-cpp-python turns a JSON schema into GBNF (LlamaGrammar.from_json_schema); the grammar
sampler then lets only tokens that keep the text inside the schema through, so even a 135M model
answers `{"action": "on", "device": "kitchen light"}` and never prose. Compiled grammars are kept
(a voice assistant sends the same schema every time).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from typing import Any

from daemon.engine import gbnf, llama_compat, tools
from daemon.requests import ErrorCode, Request

_CACHE_SIZE = 16


class SchemaError(ValueError):
    """The schema cannot become a grammar; the message says why."""

    code = ErrorCode.BAD_REQUEST


class Grammars:
    """Compiles schemas and GBNF to grammars, most recent kept (the worker thread is the only
    user). With the model (llm) a GBNF grammar is also parsed by llama.cpp before it is used."""

    def __init__(self, llm: Any = None) -> None:
        self._llm = llm
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def for_schema(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        return self._cached(key, lambda: _compile(key))

    def for_gbnf(self, text: str) -> Any:
        """A client's GBNF grammar; SchemaError when it is not one this node runs (gbnf.py)."""
        return self._cached(f"gbnf:{text}", lambda: self._compile_gbnf(text))

    def for_request(self, req: Request, call_format: str) -> Any:
        """The grammar a request's reply must follow, or None: its json_schema, its grammar, or
        with tool_choice "required" a call to one of its tools in the template's format."""
        if req.json_schema is not None:
            return self.for_schema(req.json_schema)
        if req.grammar is not None:
            return self.for_gbnf(req.grammar)
        offered = tools.offered(req)
        if offered is not None and req.tool_choice == "required":
            return self._cached(
                f"call:{call_format}:{json.dumps(offered, sort_keys=True)}",
                lambda: _call_grammar(offered, call_format),
            )
        return None

    def _cached(self, key: str, compile_: Any) -> Any:
        grammar = self._cache.get(key)
        if grammar is None:
            grammar = compile_()
            self._cache[key] = grammar
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return grammar

    def _compile_gbnf(self, text: str) -> Any:
        from llama_cpp import LlamaGrammar

        try:
            gbnf.check(text)
        except gbnf.GrammarError as err:
            raise SchemaError(str(err)) from None
        if self._llm is not None and not llama_compat.grammar_compiles(self._llm, text):
            raise SchemaError(
                "grammar: llama.cpp's parser refused it (a left-recursive rule such as"
                ' x ::= x "a" is the usual cause)'
            )
        return LlamaGrammar.from_string(text, verbose=False)


# llama-cpp-python's converter lets a JSON string hold raw control characters (a newline, say),
# which no JSON parser accepts: a small model wandered into "kitchen light }\n\nThis is..."
# inside a string. llama.cpp's own converter excludes them; so does this one. Tested: 0.3.36.
_LOOSE_CHAR = r'char ::= [^"\\]'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F]'


def _compile(schema_json: str) -> Any:
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        text = json_schema_to_gbnf(schema_json).replace(_LOOSE_CHAR, _JSON_CHAR)
        return LlamaGrammar.from_string(text, verbose=False)
    except Exception as err:  # the converter raises several kinds for a schema it cannot take
        raise SchemaError(f"json_schema: cannot be used as a grammar ({err})") from err


# Where each call format puts the call's JSON (tools.call_format); the schema's own root rule
# is renamed edgellm-call.
_CALL_ROOT = {
    "hermes": 'root ::= "<tool_call>\\n" edgellm-call "\\n</tool_call>"',
    "mistral": 'root ::= "[TOOL_CALLS][" edgellm-call "]"',
    "json": "root ::= edgellm-call",
}
_ROOT_RULE = re.compile(r"^root ::=", re.M)


def _call_grammar(offered: tuple[dict[str, Any], ...], call_format: str) -> Any:
    """A grammar for one call to one of the tools, in the template's format."""
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = json.dumps(tools.call_schema(offered, call_format))
    try:
        body = json_schema_to_gbnf(schema).replace(_LOOSE_CHAR, _JSON_CHAR)
    except Exception as err:  # the converter raises several kinds for a schema it cannot take
        raise SchemaError(
            f"tools: a parameters schema cannot be used as a grammar ({err})"
        ) from err
    text = f"{_CALL_ROOT[call_format]}\n{_ROOT_RULE.sub('edgellm-call ::=', body)}"
    return LlamaGrammar.from_string(text, verbose=False)


def parsed(text: str) -> dict[str, Any]:
    """What the done reply adds: the parsed object, or why the text is not JSON (cut short by
    max_tokens or the context, say)."""
    try:
        return {"parsed": json.loads(text)}
    except ValueError as err:
        return {"parsed": None, "parse_error": f"not complete JSON: {err}"}
