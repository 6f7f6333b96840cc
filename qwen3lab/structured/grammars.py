"""The grammars of structured output, as llguidance Lark text: one JSON value, or Hermes tool calls.

Owns what the constrained answer may look like: the JSON layout (separators, whitespace), the
Qwen/Hermes ``<tool_call>`` framing, and checking user schemas and tool lists with clear errors.
Leaves out tokens and per-step state (``backend.py``, ``constraint.py``).
"""

from __future__ import annotations

import json

import llguidance

# Compact JSON with json.dumps' separators (what Qwen's template writes for tool calls) and no other
# whitespace: free whitespace lets a weak model pad forever instead of closing the value.
_LAYOUT = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}
# A little whitespace around the answer (Qwen writes "\n\n" after </think>), bounded for the same reason.
_EDGES = 'WS: /[ \\t\\r\\n]{1,4}/\n'
ANY_OBJECT = {"type": "object"}


def _with_layout(schema: dict, strict: bool) -> dict:
    # x-guidance carries compile options inside the schema, so they also reach %json inside Lark;
    # options the caller put there win over ours.
    options = {**_LAYOUT, "lenient": not strict, **schema.get("x-guidance", {})}
    return {**schema, "x-guidance": options}


def check_schema(schema, what: str, strict: bool = True) -> dict:
    """``schema`` with our layout options, or ValueError naming ``what`` and the problem."""
    if not isinstance(schema, dict):
        raise ValueError(f"{what} must be a JSON object (a dict), got {type(schema).__name__}")
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable: {e}") from e
    if not isinstance(schema.get("x-guidance", {}), dict):
        raise ValueError(f"{what}: 'x-guidance' must be an object of llguidance JSON options")
    laid_out = _with_layout(json.loads(text), strict)
    error = llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_json_schema(laid_out))
    if error:
        raise ValueError(f"invalid {what}: {error}")
    return laid_out


def json_grammar(schema: dict | None, strict: bool = True) -> str:
    """Lark for one JSON value matching ``schema`` (None: any JSON object), bounded whitespace around it.

    ``strict=False`` compiles leniently: schema keywords llguidance does not implement are ignored
    instead of raising, so the output may not honour them.
    """
    laid_out = check_schema(ANY_OBJECT if schema is None else schema, "JSON schema", strict)
    return f"start: WS? value WS?\n{_EDGES}value: %json {json.dumps(laid_out)}\n"


def tool_functions(tools: list[dict]) -> dict[str, dict]:
    """``{name: parameters schema}`` from OpenAI tools (``{"type": "function", "function": {...}}``)
    or bare function objects (``{"name": ..., "parameters": ...}``)."""
    if not isinstance(tools, list) or not tools:
        raise ValueError("tool calls were required but no tools were given: pass tools=[{'type': 'function', "
                         "'function': {'name': ..., 'parameters': {...}}}, ...]")
    functions: dict[str, dict] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"tools[{i}] has no function name: expected {{'type': 'function', "
                             "'function': {'name': ..., 'parameters': {...}}}")
        if name in functions:
            raise ValueError(f"tools[{i}]: function {name!r} is defined twice")
        params = fn.get("parameters")
        functions[name] = ANY_OBJECT if params is None else params
    return functions


def tool_call_grammar(tools: list[dict], function_name: str | None = None, tag_tokens: bool = True) -> str:
    """Lark for one or more Hermes tool calls, each
    ``<tool_call>\\n{"name": "<fn>", "arguments": {...}}\\n</tool_call>``, separated by newlines.

    ``<tool_call>`` / ``</tool_call>`` are Qwen's added tokens, so with ``tag_tokens`` the grammar
    names them as tokens; without (a tokenizer that lacks them) they are plain text.
    The arguments follow the function's ``parameters`` schema; ``function_name`` limits the calls
    to that one function.
    """
    functions = tool_functions(tools)
    if function_name is not None:
        if function_name not in functions:
            raise ValueError(f"tool_choice names function {function_name!r}, which is not among the tools: "
                             f"{', '.join(sorted(functions))}")
        functions = {function_name: functions[function_name]}
    rules = []
    for i, (name, params) in enumerate(functions.items()):
        args = check_schema(params, f"parameters schema of tool {name!r}")
        head = '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '
        rules.append(f'call_{i}: {json.dumps(head, ensure_ascii=False)} %json {json.dumps(args)} "}}"')
    bodies = " | ".join(f"call_{i}" for i in range(len(rules)))
    start, end = ("<tool_call>", "</tool_call>") if tag_tokens else ('"<tool_call>"', '"</tool_call>"')
    return (f'start: WS? tool_call ("\\n" tool_call)* WS?\n{_EDGES}'
            f'tool_call: {start} "\\n" ({bodies}) "\\n" {end}\n' + "\n".join(rules) + "\n")
