"""Single-turn tool calling scored as BFCL's AST checker does: the calls a model makes against the
sample's possible answers.

A sample's ``ground_truth`` is BFCL's possible-answer form: a list with one ``{function name:
{parameter: [accepted values]}}`` per expected call. A call passes when its function is expected,
every required parameter (from the tool's JSON schema) is given, no parameter outside the schema is,
each value has its schema type and is one of the accepted values (strings compared without case,
surrounding space and punctuation, as BFCL standardizes them), and a parameter left out is one whose
accepted values include ``""`` (optional). Parallel calls match in any order; the count must agree.
"""

from __future__ import annotations

import json
import re
import string

_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "array": (list,),
          "object": (dict,)}


def _standard(value):
    if isinstance(value, str):
        return re.sub(f"[{re.escape(string.punctuation)} ]", "", value).lower()
    if isinstance(value, list):
        return [_standard(v) for v in value]
    if isinstance(value, dict):
        return {k: _standard(v) for k, v in value.items()}
    return value


def _type_ok(value, schema: dict) -> bool:
    kind = schema.get("type")
    if kind is None or kind not in _TYPES:
        return True
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[kind])


def _call_ok(name: str, args: dict, accepted: dict, tool: dict | None) -> str | None:
    """None when the call passes, else why not."""
    params = ((tool or {}).get("function", tool or {}).get("parameters") or {})
    props, required = params.get("properties", {}), set(params.get("required", []))
    for p in required - set(args):
        return f"{name}: required parameter {p!r} missing"
    for p, value in args.items():
        if props and p not in props:
            return f"{name}: unexpected parameter {p!r}"
        if p in props and not _type_ok(value, props[p]):
            return f"{name}: parameter {p!r} is {type(value).__name__}, the schema says {props[p].get('type')}"
        if p in accepted and _standard(value) not in [_standard(v) for v in accepted[p] if v != ""]:
            return f"{name}: parameter {p!r} = {value!r} is not among {accepted[p]!r}"
    for p, values in accepted.items():
        if p not in args and "" not in values:
            return f"{name}: parameter {p!r} missing"
    return None


def check_calls(calls: list[dict], ground_truth: list[dict], tools: list[dict]) -> tuple[bool, str]:
    """``calls``: OpenAI tool calls (``function.name`` / ``function.arguments`` JSON) -> (passed, reason)."""
    by_name = {(t.get("function") or t).get("name"): t for t in tools}
    parsed = []
    for c in calls:
        f = c.get("function", c)
        args = f.get("arguments", {})
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            return False, f"{f.get('name')}: arguments are not JSON"
        parsed.append((f.get("name"), args if isinstance(args, dict) else {}))
    if len(parsed) != len(ground_truth):
        return False, f"{len(parsed)} call(s), expected {len(ground_truth)}"
    left = list(parsed)
    for expected in ground_truth:
        (name, accepted), = expected.items()
        reasons = []
        for i, (got_name, args) in enumerate(left):
            if got_name != name:
                continue
            why = _call_ok(name, args, accepted, by_name.get(name))
            if why is None:
                del left[i]
                break
            reasons.append(why)
        else:
            return False, reasons[0] if reasons else f"no call to {name}"
    return True, "ok"


def prompted(messages: list[dict], tools: list[dict]) -> list[dict]:
    """For a chat template that does not render tools: the tools and the call format in a system turn, as
    BFCL prompts models without native function calling."""
    docs = json.dumps([t.get("function", t) for t in tools], ensure_ascii=False)
    system = ("You can call these functions:\n" + docs + "\nTo call one, answer only with\n<tool_call>\n"
              '{"name": <function name>, "arguments": <JSON object of arguments>}\n</tool_call>')
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + system}, *messages[1:]]
    return [{"role": "system", "content": system}, *messages]


def as_text(calls: list[dict]) -> str:
    """Tool calls written back as Hermes-style ``<tool_call>`` blocks, the form the parser reads."""
    return "".join("\n<tool_call>\n" + json.dumps({"name": (c.get("function") or c)["name"], "arguments": json.loads(
        (c.get("function") or c).get("arguments") or "{}")}, ensure_ascii=False) + "\n</tool_call>" for c in calls)
