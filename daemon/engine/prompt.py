"""The prompt a request becomes: chat template, BOS, the fixed system prompt, the policy checks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from daemon.config import GenerationConfig, PolicyConfig
from daemon.engine import llama_compat, toolprompt, tools
from daemon.engine.structured import Grammars
from daemon.requests import ChatMessage, ErrorCode, Request
from daemon.safeguards.policy import Classifier, TermFilter, compose_system


class Refused(Exception):
    """The request cannot run as sent: a code and a message for its error reply."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Prompter:
    """Turns a request into prompt tokens for one loaded model, and judges text by the policy."""

    def __init__(
        self,
        llm: Any,
        model_name: str,
        gen: GenerationConfig,
        policy: PolicyConfig,
        template: str | None,
        classifier: Classifier | None = None,
    ):
        from llama_cpp import llama_chat_format

        self.grammars = Grammars(llm)  # structured output: compiled grammars
        # Tools: whether the template renders tool definitions, and the call shape it teaches;
        # a template that renders none gets edgellm's own format (toolprompt.py).
        self.takes_tools = tools.template_takes_tools(template)
        self.call_format = tools.call_format(template) if self.takes_tools else "edgellm"
        self._tools: tuple[dict[str, Any], ...] | None = None

        self._llm = llm
        self._name = model_name
        self._classifier = classifier
        eos_text = llama_compat.token_text(llm, llm.token_eos())
        self._bos_text = llama_compat.token_text(llm, llm.token_bos())
        self._add_bos = llama_compat.adds_bos(llm)
        self._chat_format: Any = None
        if template:
            self._chat_format = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=eos_text, bos_token=self._bos_text
            )
        # Replaced by the engine on a reload (update_settings).
        self.gen = gen
        self.policy = policy

    @property
    def chat(self) -> bool:
        """Whether the model has a chat template (else only plain completion)."""
        return self._chat_format is not None

    @contextlib.contextmanager
    def offering(self, offered: tuple[dict[str, Any], ...] | None) -> Iterator[None]:
        """Give the prompt these tool definitions while one request's prompt is encoded (every
        encode inside, however it is assembled): to the chat template when it renders tools,
        else in edgellm's own format (toolprompt.py). Refused on a model without chat."""
        if offered and self._chat_format is None:
            raise Refused(
                ErrorCode.BAD_REQUEST,
                f"model {self._name} has no chat template, so it cannot call tools",
            )
        self._tools = offered
        try:
            yield
        finally:
            self._tools = None

    def encode(
        self, prompt: str | None, messages: tuple[ChatMessage, ...] | None, system: str | None
    ) -> list[int]:
        """The prompt tokens: through the chat template on a chat model, raw text otherwise.

        The policy's fixed system prompt always comes first; a request's own system text (its
        `system` field or a leading system message) can only follow it.
        """
        own = system if system is not None else self.gen.system
        if messages and messages[0].role == "system":
            own, messages = messages[0].content, messages[1:]
        system = compose_system(self.policy.system_prompt, own)
        if self._chat_format is None:
            if messages is not None:
                raise Refused(
                    ErrorCode.BAD_REQUEST,
                    f"model {self._name} has no chat template: send 'prompt' for plain completion",
                )
            assert prompt is not None
            text = f"{system}\n\n{prompt}" if system else prompt
            return self._llm.tokenize(text.encode("utf-8"), add_bos=self._add_bos, special=False)
        return self._encode_chat(prompt, messages, system)

    def _encode_chat(
        self, prompt: str | None, messages: tuple[ChatMessage, ...] | None, system: str | None
    ) -> list[int]:
        chat: list[dict[str, Any]] = []
        offered = self._tools if self.takes_tools else None
        if self._tools and not self.takes_tools:
            own = toolprompt.section(self._tools, self.gen.tool_prompt)
            system = f"{system}\n\n{own}" if system else own
        if system:
            chat.append({"role": "system", "content": system})
        if messages is not None:
            chat.extend(tools.template_message(m, self.takes_tools) for m in messages)
        else:
            assert prompt is not None
            chat.append({"role": "user", "content": prompt})
        try:
            text = self._chat_format(messages=chat, tools=offered).prompt
        except Exception as err:  # the template's own raise_exception, e.g. role order
            raise Refused(
                ErrorCode.BAD_REQUEST, f"chat template refused the messages: {err}"
            ) from None
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        # special=True: the template's control tokens (<|im_start|>) must become single tokens.
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def check_request(self, req: Request) -> Refused | None:
        """The policy's verdict on what the request brings (blocked terms, the classifier)."""
        texts = [req.prompt or "", req.system or ""]
        texts += [m.content for m in req.messages or ()]
        texts += [json.dumps(t, ensure_ascii=False) for t in tools.offered(req) or ()]
        terms = TermFilter(self.policy.blocked_terms)
        if any(terms.find_in(t) for t in texts):
            return Refused(ErrorCode.POLICY, "the request contains a term this node refuses")
        if self._classifier is not None:
            reason = self._classifier.check("\n".join(t for t in texts if t))
            if reason is not None:
                return Refused(ErrorCode.POLICY, f"refused by the safety classifier: {reason}")
        return None

    def check_reply(self, terms: TermFilter, text: str) -> str | None:
        """Why the finished reply must not be sent (policy), or None."""
        if terms.blocked:
            return "the reply was stopped by this node's policy"
        if self._classifier is not None and text:
            reason = self._classifier.check(text)
            if reason is not None:
                return f"the reply was refused by the safety classifier: {reason}"
        return None
