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
from collections.abc import Callable
from typing import Any

from daemon.engine import gbnf, llama_compat, tools
from daemon.requests import ErrorCode, Request

_CACHE_SIZE = 16


class SchemaError(ValueError):
    """The schema cannot become a grammar; the message says why."""

    code = ErrorCode.BAD_REQUEST


class Grammars:
    """Compiles schemas and GBNF to grammars, most recent kept (the worker thread is the only
    user). Every grammar passes gbnf.check and, with the model (llm), llama.cpp's own parser
    before it is used: llama.cpp crashes on one that fails either (gbnf.py)."""

    def __init__(self, llm: Any = None) -> None:
        self._llm = llm
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def for_schema(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        return self._cached(key, lambda: self._checked(_schema_gbnf(key), "json_schema"))

    def for_gbnf(self, text: str) -> Any:
        """A client's GBNF grammar; SchemaError when it is not one this node runs (gbnf.py)."""
        return self._cached(f"gbnf:{text}", lambda: self._checked(text, None))

    def for_request(self, req: Request, call_format: str) -> Any:
        """The grammar a request's reply must follow, or None: its json_schema, its grammar, or
        with tools a call to one of them in the template's format: with tool_choice "required"
        only calls, with "auto" plain text or calls (the formats that mark a call: edgellm's,
        Hermes, Mistral; a Llama 3.x call is bare JSON and stays unconstrained)."""
        if req.json_schema is not None:
            return self.for_schema(req.json_schema)
        if req.grammar is not None:
            return self.for_gbnf(req.grammar)
        offered = tools.offered(req)
        if offered is None or (req.tool_choice != "required" and call_format not in _AUTO):
            return None
        choice = req.tool_choice
        return self._cached(
            f"call:{choice}:{call_format}:{json.dumps(offered, sort_keys=True)}",
            lambda: self._checked(_call_gbnf(offered, call_format, choice), "tools"),
        )

    def _cached(self, key: str, compile_: Callable[[], Any]) -> Any:
        grammar = self._cache.get(key)
        if grammar is None:
            grammar = compile_()
            self._cache[key] = grammar
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return grammar

    def _checked(self, text: str, made_from: str | None) -> Any:
        """The grammar, or SchemaError naming the field it came from (None: a client's own)."""
        from llama_cpp import LlamaGrammar

        why = None
        try:
            gbnf.check(text, gbnf.MAX_CHARS if made_from is None else gbnf.MAX_BUILT_CHARS)
        except gbnf.GrammarError as err:
            why = str(err)
        if (
            why is None
            and self._llm is not None
            and not llama_compat.grammar_compiles(self._llm, text)
        ):
            why = (
                "grammar: llama.cpp's parser refused it (a left-recursive rule such as"
                ' x ::= x "a" is the usual cause)'
            )
        if why is not None:
            raise SchemaError(why if made_from is None else f"{made_from}: cannot be used ({why})")
        return LlamaGrammar.from_string(text, verbose=False)


# llama-cpp-python's converter lets a JSON string hold raw control characters (a newline, say),
# which no JSON parser accepts: a small model wandered into "kitchen light }\n\nThis is..."
# inside a string. llama.cpp's own converter excludes them; so does this one. Tested: 0.3.36.
_LOOSE_CHAR = r'char ::= [^"\\]'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F]'


def _schema_gbnf(schema_json: str, made_from: str = "json_schema") -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(schema_json).replace(_LOOSE_CHAR, _JSON_CHAR)
    except Exception as err:  # the converter raises several kinds for a schema it cannot take
        raise SchemaError(f"{made_from}: cannot be used as a grammar ({err})") from err


# Where each call format puts the call's JSON (tools.call_format); the schema's own root rule
# is renamed edgellm-call.
_CALL_BLOCK = {
    "edgellm": 'edgellm-block ::= "<tool_call>" edgellm-call "</tool_call>"',
    "hermes": 'edgellm-block ::= "<tool_call>\\n" edgellm-call "\\n</tool_call>"',
    "mistral": 'edgellm-block ::= "[TOOL_CALLS][" edgellm-call "]"',
    "json": "edgellm-block ::= edgellm-call",
}
# With tool_choice "auto": text that does not start like a call, or up to four calls (a small
# model told it may call again loops; Home Assistant asks again after each result anyway).
_AUTO = {
    "edgellm": ("<", 'edgellm-calls ::= edgellm-block ("\\n" edgellm-block){0,3}'),
    "hermes": ("<", 'edgellm-calls ::= edgellm-block ("\\n" edgellm-block){0,3}'),
    "mistral": ("[", "edgellm-calls ::= edgellm-block"),
}
_ROOT_RULE = re.compile(r"^root ::=", re.M)


def _call_gbnf(offered: tuple[dict[str, Any], ...], call_format: str, choice: str) -> str:
    """A grammar for calls to the tools in the template's format: with tool_choice "required"
    one call, with "auto" text or calls (_AUTO)."""
    try:
        body = _schema_gbnf(json.dumps(tools.call_schema(offered, call_format)), "tools")
    except SchemaError:
        # A tool whose parameters the converter cannot take keeps its name and any object as
        # arguments, rather than costing the request every tool.
        body = _schema_gbnf(json.dumps(tools.call_schema(_loosened(offered), call_format)))
    rules = [_CALL_BLOCK[call_format], _ROOT_RULE.sub("edgellm-call ::=", body)]
    if choice == "required":
        return "\n".join(["root ::= edgellm-block", *rules])
    marker, calls = _AUTO[call_format]
    # The text's first character is anything but the call's first: llama.cpp's grammar sampler
    # then follows one branch from the first token on, and a call is never half text.
    text = f"edgellm-text ::= [^{marker}\\x00] [^\\x00]*"
    return "\n".join(["root ::= edgellm-calls | edgellm-text", calls, text, *rules])


def _loosened(offered: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    """The tools, each whose own schema cannot be a grammar given any object as arguments."""
    out = []
    for tool in offered:
        try:
            _schema_gbnf(json.dumps(tools.call_schema((tool,), "edgellm")))
            out.append(tool)
        except SchemaError:
            fn = {**tool["function"], "parameters": {"type": "object"}}
            out.append({**tool, "function": fn})
    return tuple(out)


def parsed(text: str) -> dict[str, Any]:
    """What the done reply adds: the parsed object, or why the text is not JSON (cut short by
    max_tokens or the context, say)."""
    try:
        return {"parsed": json.loads(text)}
    except ValueError as err:
        return {"parsed": None, "parse_error": f"not complete JSON: {err}"}
