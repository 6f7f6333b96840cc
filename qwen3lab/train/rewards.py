"""Reward functions for GRPO: ``reward(completion: str, example: dict) -> float`` in [0, 1].

Built in: ``math`` (final answer vs ``example["answer"]``, checked with the ``math-verify`` package:
the last ``\\boxed{}`` or number of the completion against the reference, symbolically),
``json`` (0.5 for a valid JSON object, 1.0 when it also equals ``example["record"]`` / the fields
listed in ``example["fields"]``), ``tool_call`` (name and arguments of the first ``<tool_call>``
against ``example["tool_call"]``: 0.5 for the name, 1.0 for name and arguments). A user reward is a
``module:function`` path with the same signature.
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Callable

from ..chat.parser import parse_output
from ..eval.scoring import first_json_object

Reward = Callable[[str, dict], float]


def _strip_think(text: str) -> str:
    return text.split("</think>")[-1]


def math_reward(completion: str, example: dict) -> float:
    from math_verify import parse, verify

    text = _strip_think(completion)
    gold = parse("$" + str(example["answer"]) + "$")
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    # The final answer is the last \boxed{} when there is one, else the last number in the text.
    candidate = boxed[-1] if boxed else (re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", "")) or [None])[-1]
    if candidate is None:
        return 0.0
    return float(verify(gold, parse("$" + candidate + "$")))


def json_reward(completion: str, example: dict) -> float:
    obj = first_json_object(completion)
    if not isinstance(obj, dict):
        return 0.0
    want = example.get("record") or {}
    fields = example.get("fields") or list(want)
    return 1.0 if all(obj.get(k) == want.get(k) for k in fields) else 0.5


def tool_call_reward(completion: str, example: dict) -> float:
    calls = parse_output(completion, thinking="<think>" in completion).tool_calls
    if not calls:
        return 0.0
    fn = calls[0].get("function", calls[0])
    want = example["tool_call"]
    if fn.get("name") != want["name"]:
        return 0.0
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return 0.5
    return 1.0 if args == want.get("arguments", {}) else 0.5


BUILTIN: dict[str, Reward] = {"math": math_reward, "json": json_reward, "tool_call": tool_call_reward}


def resolve_reward(name: str) -> Reward:
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise ValueError(f"unknown reward {name!r}: use one of {', '.join(BUILTIN)} or a 'module:function' path")
    module, _, attr = name.partition(":")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ValueError(f"reward {name!r}: {module} has no function {attr!r}")
    return fn
