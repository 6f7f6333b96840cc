"""Structured output: JSON-schema answers and forced tool calls as per-step token masks.

A factory builds one constraint per sample for ``LLMEngine.add_request(constraint_factory=...)``;
the engine masks what a constraint disallows and feeds it every generated token.
"""

from .constraint import Constraint, GrammarConstraint, json_constraint_factory, tool_call_constraint_factory
from .openai import constraint_for_request

__all__ = ["Constraint", "GrammarConstraint", "json_constraint_factory", "tool_call_constraint_factory",
           "constraint_for_request"]
