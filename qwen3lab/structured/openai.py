"""OpenAI request fields -> a constraint factory: ``response_format`` and ``tool_choice``.

Owns reading the OpenAI shapes (shared by ``LLM.chat`` and the server) and rejecting bad ones with
a ValueError that names the field. Leaves the grammars and their state to ``constraint.py``.

- ``response_format``: ``{"type": "text"}`` (no constraint), ``{"type": "json_object"}`` (any JSON
  object), ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``.
- ``tool_choice``: ``"auto"`` / ``"none"`` / None (no constraint: the model may or may not call
  tools), ``"required"`` (one or more calls to any tool), ``{"type": "function", "function":
  {"name": ...}}`` (calls to that function only).
"""

from __future__ import annotations

from typing import Callable

from .constraint import GrammarConstraint, json_constraint_factory, tool_call_constraint_factory


def _tool_choice_function(tool_choice) -> tuple[bool, str | None]:
    """(constrained, function name) for an OpenAI ``tool_choice``."""
    if tool_choice in (None, "auto", "none"):
        return False, None
    if tool_choice == "required":
        return True, None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return True, name
    raise ValueError(f"tool_choice {tool_choice!r} is not supported: use 'auto', 'none', 'required' or "
                     "{'type': 'function', 'function': {'name': ...}}")


def _json_schema(response_format: dict) -> tuple[dict | None, bool] | None:
    """(schema, strict) for a JSON response_format, None for plain text."""
    if not isinstance(response_format, dict):
        raise ValueError(f"response_format must be an object such as {{'type': 'json_object'}}, "
                         f"got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return None, True
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise ValueError("response_format of type 'json_schema' needs a 'json_schema' object "
                             "holding 'name' and 'schema'")
        # strict False compiles leniently (unsupported keywords ignored); unset: report them.
        return spec.get("schema"), spec.get("strict") is not False
    raise ValueError(f"response_format type {kind!r} is not supported: use 'text', 'json_object' or 'json_schema'")


def constraint_for_request(tokenizer, *, response_format: dict | None = None, tools: list[dict] | None = None,
                           tool_choice=None, thinking: bool) -> Callable[[], GrammarConstraint] | None:
    """The constraint factory an OpenAI chat request asks for, or None when it asks for none."""
    forced_tools, function_name = _tool_choice_function(tool_choice)
    json_spec = _json_schema(response_format) if response_format is not None else None
    if forced_tools and json_spec is not None:
        raise ValueError(f"tool_choice {tool_choice!r} forces tool calls, which cannot also follow "
                         "response_format; drop one of the two")
    if forced_tools:
        if not tools:
            raise ValueError(f"tool_choice {tool_choice!r} needs tools: pass the functions in 'tools'")
        return tool_call_constraint_factory(tokenizer, tools, function_name=function_name, thinking=thinking)
    if json_spec is not None:
        schema, strict = json_spec
        return json_constraint_factory(tokenizer, schema, thinking=thinking, strict=strict)
    return None
