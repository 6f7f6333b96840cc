"""Per-sequence decoding constraints for the engine's hook, and the factories that make them.

Owns the state of one constrained sequence: the thinking gate (free text until ``</think>``), the
llguidance matcher fed with every generated token, and what is allowed once the value is complete
(only the end-of-sequence tokens). ``LLMEngine.add_request(constraint_factory=...)`` calls a factory
once per sample. Grammars come from ``grammars.py``; llguidance details stay in ``backend.py``.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

import torch

from . import backend
from .grammars import json_grammar, tool_call_grammar

log = logging.getLogger("qwen3lab")
THINK_END = "</think>"


class Constraint(Protocol):
    def allowed_tokens(self, vocab_size: int) -> torch.Tensor | None: ...
    def advance(self, token_id: int) -> None: ...


class GrammarConstraint:
    """One sequence's grammar state. ``allowed_tokens`` returns None while the model still thinks."""

    def __init__(self, matcher, n_tokens: int, stop_ids: list[int], think_end_id: int | None):
        self.matcher, self.n_tokens, self.stop_ids = matcher, n_tokens, stop_ids
        self.think_end_id = think_end_id
        self.active = think_end_id is None
        self.error: str | None = None

    @property
    def done(self) -> bool:
        """The value is complete and an end token was taken (or the matcher failed)."""
        return self.error is not None or self.matcher.is_stopped()

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor | None:
        if not self.active:
            return None
        if self.done:
            # The engine stops on its eos set; should it not stop on ours, keep ending, never resume.
            return backend.only(self.stop_ids, vocab_size)
        return backend.allowed_mask(self.matcher, vocab_size, self.n_tokens)

    def advance(self, token_id: int) -> None:
        token_id = int(token_id)
        if not self.active:
            self.active = token_id == self.think_end_id
            return
        if self.done:
            return
        if token_id >= self.n_tokens or not self.matcher.consume_token(token_id):
            # Only possible when the mask was bypassed; raising here would fail the whole engine step,
            # so the sequence is steered to its end instead.
            self.error = self.matcher.get_error() or f"token {token_id} is outside the tokenizer"
            log.warning("structured output: token %d rejected by the grammar: %s", token_id, self.error)


def _factory(tokenizer, lark: str, what: str, thinking: bool) -> Callable[[], GrammarConstraint]:
    prototype = backend.compile_grammar(tokenizer, lark, what)  # compiled once, copied per sample
    think_end = tokenizer.token_to_id(THINK_END) if thinking else None
    n_tokens, stops = tokenizer.vocab_size, backend.stop_token_ids(tokenizer)
    return lambda: GrammarConstraint(prototype.deep_copy(), n_tokens, stops, think_end)


def json_constraint_factory(tokenizer, schema: dict | None, *, thinking: bool,
                            strict: bool = True) -> Callable[[], GrammarConstraint]:
    """Constraints that make the answer one JSON value matching ``schema`` (None: any JSON object).

    With ``thinking`` the model reasons freely until it emits ``</think>`` (ignored when the tokenizer
    has no such token), then the grammar applies. ``strict=False`` ignores schema keywords llguidance
    does not implement instead of raising. Raises ValueError naming what is wrong with the schema.
    """
    return _factory(tokenizer, json_grammar(schema, strict), "JSON schema", thinking)


def tool_call_constraint_factory(tokenizer, tools: list[dict], *, function_name: str | None,
                                 thinking: bool) -> Callable[[], GrammarConstraint]:
    """Constraints that make the answer one or more Hermes tool calls to ``tools``
    (or only to ``function_name``), arguments matching each function's ``parameters`` schema."""
    ids = [tokenizer.token_to_id(t) for t in ("<tool_call>", "</tool_call>")]
    lltok = backend.ll_tokenizer(tokenizer)
    tag_tokens = all(i is not None and lltok.is_special_token(i) for i in ids)
    lark = tool_call_grammar(tools, function_name, tag_tokens=tag_tokens)
    return _factory(tokenizer, lark, "tool-call grammar", thinking)
